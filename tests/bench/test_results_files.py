"""Every result file the documentation names exists: ``benchmarks/results/<name>`` anywhere in the
README and docs/, and the bare names of ``docs/performance.md`` and ``docs/performance_log.md``
(whose convention is that a name without a folder lies under ``benchmarks/results/``, a superseded
one under ``archive/``). Moving a file to the archive without updating its links fails here."""
import glob
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
NAME = r"[\w*.-]+\.(?:json|png|txt|log)(?![\w])"
BARE_NAMES = ("docs/performance.md", "docs/performance_log.md")  # names without a folder are results


def named_results(doc: str) -> list[str]:
    """The result paths (relative to benchmarks/results/, globs allowed) that ``doc`` names."""
    text = (ROOT / doc).read_text()
    names = re.findall(rf"benchmarks/results/((?:archive/)?{NAME})", text)
    if doc in BARE_NAMES:  # not after a folder, $OUT/ or a glob star: a name of its own
        names += re.findall(rf"(?<![\w/$.*-])((?:archive/)?{NAME})", text)
    return names


def test_every_result_file_the_docs_name_exists():
    docs = ["README.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")))]
    missing = [(doc, name) for doc in docs for name in named_results(doc) if not glob.glob(str(RESULTS / name))]
    assert missing == []
    assert len(named_results("docs/performance_log.md")) > 30  # the check does read the log's names


def test_the_current_page_names_no_archived_file_and_the_plot_is_current():
    assert not [n for n in named_results("docs/performance.md") if n.startswith("archive/")]
    # the README shows the plot of the current sweep (issue 12: the H200 one), and the file is there
    assert "benchmarks/results/model_bench_H200_sweep.png" in (ROOT / "README.md").read_text()
    assert (RESULTS / "model_bench_H200_sweep.png").is_file() and (RESULTS / "archive").is_dir()
