"The package's layout: each module imports only modules of notebooks before it, so there is no import cycle."
import ast, re
from pathlib import Path
from conftest import ROOT

PKG = ROOT / 'criteria_cls'


def notebook_number(path:Path) -> tuple:
    "`(number, letter)` of the notebook a module is written from (`File to edit: ../nbs/NNx_name.ipynb`, x optional)."
    m = re.search(r'File to edit: \.\./nbs/(\d+)([a-z]?)_\w+\.ipynb', path.read_text()[:600])
    assert m, f'{path} is not written by nbdev_export from a numbered notebook'
    return int(m.group(1)), m.group(2)


def test_notebook_number_orders_letters_after_their_number(tmp_path):
    for name in ('05_x', '05a_x', '05b_x', '06_x'):
        (tmp_path / f'{name}.py').write_text(f'# File to edit: ../nbs/{name}.ipynb')
    numbers = [notebook_number(tmp_path / f'{n}.py') for n in ('05_x', '05a_x', '05b_x', '06_x')]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4


def package_imports(path:Path) -> set:
    "Modules of criteria_cls that `path` imports anywhere (top level or inside functions)."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: mod = f'criteria_cls.{mod}' if mod else 'criteria_cls'
            if mod == 'criteria_cls': out |= {f'criteria_cls.{a.name}' for a in node.names}
            elif mod.startswith('criteria_cls.'): out.add(mod)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith('criteria_cls.')}
    return {m.split('.')[1] for m in out if (PKG / f"{m.split('.')[1]}.py").exists()}


def modules() -> dict:
    return {p.stem: p for p in sorted(PKG.glob('*.py')) if not p.stem.startswith('_')}


def find_cycle(graph:dict):
    "A list of modules forming a cycle, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = 'open'; stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 'open': return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)): return c
        state[m] = 'done'; stack.pop()
        return None
    for m in sorted(graph):
        if m not in state and (c := visit(m)): return c
    return None


def test_find_cycle_finds_one():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycle():
    graph = {m: package_imports(p) - {m} for m, p in modules().items()}
    assert find_cycle(graph) is None, f'import cycle: {" -> ".join(find_cycle(graph))}'


def test_each_module_imports_only_earlier_notebooks():
    mods = modules()
    number = {m: notebook_number(p) for m, p in mods.items()}
    assert len(set(number.values())) == len(number), f'two modules from one notebook number: {number}'
    late = [(m, n) for m, p in mods.items() for n in package_imports(p) if n != m and number[n] >= number[m]]
    assert not late, f'modules importing a later notebook (module, imported): {late}'


def test_orchestration_imports_no_model_library():
    """What sets up, runs and aggregates a CV (the CLI, pipeline, jobs, registry, tune, cluster) imports neither torch
    nor transformers nor peft nor nbconvert at module level: each `criteria-cls` command, each aggregation kernel and
    each bad-input error starts in seconds; those libraries load inside the functions that train or score."""
    import subprocess, sys
    code = ('import sys, json\nimport criteria_cls.cli, criteria_cls.pipeline, criteria_cls.jobs, criteria_cls.registry, '
            'criteria_cls.tune, criteria_cls.cluster, criteria_cls.compare\n'
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'peft', 'nbconvert') if m in sys.modules)))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split('\n')[-2] == '[]', f'imported at module level: {r.stdout}'
