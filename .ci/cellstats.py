#!/usr/bin/env python3
"""How the notebooks read, in numbers: exported cell sizes, definitions shown by a cell after them, long lines.

Usage: python .ci/cellstats.py [--check] [nbs/*.ipynb ...]
Prints one row per notebook and the totals; with --check exits 1 when a bar is missed:
mean exported cell <= 13 lines, none over 40, >= 80% of exported definitions used by a code cell
after them (before the next exported cell), <= 1% of code lines over 120 columns (notebooks and tests/).
"""
import ast, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MEAN, MAX_CELL, MIN_SHOWN, MAX_LONG, COLS = 13, 40, 0.80, 0.01, 120
EXPORT = re.compile(r'^#\|\s*export(i)?\b', re.M)


def code_cells(nb:Path) -> list:
    "Source of each code cell of a notebook."
    cells = json.loads(nb.read_text())['cells']
    return [''.join(c['source']) for c in cells if c['cell_type'] == 'code']


def body_lines(src:str) -> list:
    "A cell's lines without `#|` directives and blank lines."
    return [l for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#|')]


def definitions(src:str) -> list:
    "Public top-level functions and classes a cell defines."
    try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
    except SyntaxError: return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not n.name.startswith('_')]


def notebook_stats(nb:Path) -> dict:
    "Sizes of exported cells, definitions and how many a later cell uses, code lines and long ones."
    cells = code_cells(nb)
    exported = [i for i, c in enumerate(cells) if EXPORT.search(c)]
    sizes, defs, shown = [], 0, 0
    for n, i in enumerate(exported):
        sizes.append(len(body_lines(cells[i])))
        stop = exported[n + 1] if n + 1 < len(exported) else len(cells)
        after = '\n'.join(cells[i + 1:stop])
        for name in definitions(cells[i]):
            defs += 1
            shown += bool(re.search(rf'\b{re.escape(name)}\b', after))
    lines = [l for c in cells for l in c.splitlines()]
    return {'notebook': nb.name, 'cells': len(sizes), 'lines': sum(sizes), 'max': max(sizes, default=0),
            'over40': sum(s > MAX_CELL for s in sizes), 'defs': defs, 'shown': shown,
            'code_lines': len(lines), 'long': sum(len(l) > COLS for l in lines)}


def main(argv:list) -> int:
    check = '--check' in argv
    nbs = [Path(a) for a in argv if a != '--check'] or sorted((ROOT / 'nbs').glob('*.ipynb'))
    rows = [notebook_stats(nb) for nb in nbs]
    tests = [l for f in sorted((ROOT / 'tests').rglob('*.py')) for l in f.read_text().splitlines()]
    print(f"{'notebook':<24}{'cells':>6}{'mean':>6}{'max':>5}{'>40':>5}{'defs':>6}{'shown':>7}{'lines':>7}{'>120':>6}")
    for r in rows:
        mean = r['lines'] / r['cells'] if r['cells'] else 0
        pct = r['shown'] / r['defs'] if r['defs'] else 1
        print(f"{r['notebook']:<24}{r['cells']:>6}{mean:>6.1f}{r['max']:>5}{r['over40']:>5}{r['defs']:>6}{pct:>7.0%}"
              f"{r['code_lines']:>7}{r['long']:>6}")
    cells, lines = sum(r['cells'] for r in rows), sum(r['lines'] for r in rows)
    defs, shown = sum(r['defs'] for r in rows), sum(r['shown'] for r in rows)
    code = sum(r['code_lines'] for r in rows) + len(tests)
    long = sum(r['long'] for r in rows) + sum(len(l) > COLS for l in tests)
    mean, over, pct, lpct = lines / max(cells, 1), sum(r['over40'] for r in rows), shown / max(defs, 1), long / max(code, 1)
    print(f"\nexported cells: {cells}, mean {mean:.1f} lines (bar <= {MAX_MEAN}), {over} over {MAX_CELL} (bar 0)")
    print(f"exported definitions used by a cell after them: {shown}/{defs} = {pct:.0%} (bar >= {MIN_SHOWN:.0%})")
    print(f"code lines over {COLS} columns (notebooks and tests/): {long}/{code} = {lpct:.1%} (bar <= {MAX_LONG:.0%})")
    ok = mean <= MAX_MEAN and over == 0 and pct >= MIN_SHOWN and lpct <= MAX_LONG
    if check and not ok: print('cellstats: a bar above is missed', file=sys.stderr)
    return 0 if ok or not check else 1


if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
