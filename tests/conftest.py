"Shared fixtures: offline Hugging Face, the project root, the read-only benchmarks in ../shared."
import os
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / 'shared' / 'benchmarks'


@pytest.fixture
def root(): return ROOT


@pytest.fixture
def bench():
    if not BENCH.exists(): pytest.skip(f'real benchmark data not present at {BENCH} (see ../shared/benchmarks/README.md)')
    return BENCH
