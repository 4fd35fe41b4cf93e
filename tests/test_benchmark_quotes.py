"""Benchmark numbers quoted outside docs/benchmarks.md agree with its tables and say what ran.

Text only (no timing): the H200 step time has one measured source, the GPU table's recipe row, and every
train-step table in the README names the SARC teacher it ran (the recipe's DINOv3 or the released one).
"""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    return open(os.path.join(ROOT, path), encoding="utf-8").read()


def _h200_step_time() -> str:
    gpu = _read("docs/benchmarks.md").split("## Train step on a GPU", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in gpu.splitlines() if line.startswith("| 256 | the recipe (`scan_unroll=32`)"))
    return re.search(r"\*\*([\d.–]+ ms)\*\*", row).group(1)


def test_the_h200_step_time_is_quoted_as_measured_everywhere():
    measured = _h200_step_time()
    assert "| " + measured + " |" in _read("README.md")
    scale = _read("docs/scale.md")
    quoted = re.findall(r"([\d.–]+) ?ms/step", scale)
    assert quoted and all(q + " ms" == measured for q in quoted), (quoted, measured)


def test_every_readme_train_step_table_names_its_teacher():
    headings = re.findall(r"\*\*Train step[^*]*\*\*", _read("README.md"))
    assert len(headings) >= 2
    for heading in headings:
        assert "released teacher" in heading or re.search(r"DINOv3 [\w/-]* ?teacher", heading), heading
