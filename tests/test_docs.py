"""The README and the documentation pages hold together for a reader who has only the repository.

- every relative link (and its heading anchor) leads to a file of the repository that exists;
- every repository path quoted in backticks (``tests/...``, ``examples/...``) exists;
- no page refers to files outside the repository or to the project's internal design notes, and
  "seed" only ever means a random seed;
- every markdown table has as many cells in each row as in its header (a raw ``|`` inside a cell
  splits it on GitHub, even inside backticks; write ``\\|``).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
IDS = [str(p.relative_to(ROOT)) for p in PAGES]

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+[\"'(].*)?$")
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HTML_ID = re.compile(r"""<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
ATX_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
ATTR_ID = re.compile(r"\{[^}]*#([\w-]+)[^}]*\}\s*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for i, line in enumerate(read(path), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((i, line))
    return out


# --- heading anchors ------------------------------------------------------------------------------


def heading_text(raw: str) -> tuple[str, str | None]:
    """The text a heading renders to (markup removed) and its explicit ``{#id}``, if any."""
    m = ATTR_ID.search(raw)
    explicit = m.group(1) if m else None
    text = ATTR_ID.sub("", raw)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images -> their text
    text = CODE_SPAN.sub(lambda c: c.group(2).strip(), text)
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = re.sub(r"(\*\*|__|\*)", "", text)
    return text.strip(), explicit


def mkdocs_slug(text: str) -> str:
    """Python-Markdown's ``toc`` slug (MkDocs' default): ASCII only, punctuation dropped, runs of
    spaces and hyphens joined into one hyphen."""
    value = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def github_slug(text: str) -> str:
    """GitHub's heading anchor: lower case, every character but letters, digits, ``_``, ``-`` and
    spaces dropped (Unicode letters kept), each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def unique(slugs: list[str], sep: str) -> set[str]:
    """Repeated headings get ``slug_1`` (MkDocs) or ``slug-1`` (GitHub), ``_2``, ... in order."""
    seen: dict[str, int] = {}
    out = set()
    for s in slugs:
        if s in seen:
            seen[s] += 1
            out.add(f"{s}{sep}{seen[s]}")
        else:
            seen[s] = 0
            out.add(s)
    return out


def headings(path: Path) -> list[tuple[str, str | None]]:
    return [heading_text(m.group(2)) for _, line in prose_lines(path) if (m := ATX_HEADING.match(line))]


def anchors(path: Path) -> tuple[set[str], set[str]]:
    """The anchors of a page as MkDocs and as GitHub render it; explicit ids and HTML ids count for both."""
    hs = headings(path)
    explicit = {e for _, e in hs if e} | {m.group(1) for _, line in prose_lines(path) for m in HTML_ID.finditer(line)}
    mk = unique([e or mkdocs_slug(t) for t, e in hs], "_") | explicit
    gh = unique([github_slug(t) for t, _ in hs], "-") | explicit
    return mk, gh


# --- links ----------------------------------------------------------------------------------------


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image of a page, code excluded."""
    out = []
    for i, line in prose_lines(path):
        text = CODE_SPAN.sub(lambda c: " " * len(c.group(0)), line)
        out += [(i, m.group(1)) for m in INLINE_LINK.finditer(text)]
        out += [(i, m.group(1)) for m in HTML_LINK.finditer(text)]
        if m := REFERENCE_DEF.match(text):
            out.append((i, m.group(1)))
    return out


def link_problem(page: Path, target: str) -> str | None:
    """Why ``target``, linked from ``page``, does not lead where it should; None when it does."""
    if not target or EXTERNAL.match(target):
        return None
    if target.startswith("/"):
        return "an absolute path: link relative to the page"
    file_part, _, anchor = target.partition("#")
    dest = (page.parent / file_part).resolve() if file_part else page
    if not dest.is_relative_to(ROOT):
        return "points outside the repository"
    if not dest.exists():
        return f"{dest.relative_to(ROOT)} does not exist"
    if anchor and dest.suffix == ".md":
        mk, gh = anchors(dest)
        # a page under docs/ is read on the documentation site and on GitHub; the README on GitHub
        needed = {"GitHub": gh} if dest == ROOT / "README.md" else {"MkDocs": mk, "GitHub": gh}
        missing = [name for name, found in needed.items() if anchor not in found]
        if missing:
            return f"no heading with the anchor #{anchor} in {dest.relative_to(ROOT)} (as {' and '.join(missing)} render it)"
    return None


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_relative_link_resolves(page):
    bad = [f"line {i}: ({t}): {why}" for i, t in links(page) if (why := link_problem(page, t))]
    assert not bad, f"{page.relative_to(ROOT)}:\n" + "\n".join(bad)


REPO_DIRS = "|".join(
    d for d in ("benchmarks", "docs", "dreamode", "examples", "solvers", "tests") if (ROOT / d).is_dir()
)
QUOTED_PATH = re.compile(rf"`((?:{REPO_DIRS})/[\w./-]*\w)`")


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_quoted_repository_paths_exist(page):
    """``tests/dreamode/test_batching.py`` and the like, named in backticks, are files or folders of the repo."""
    text = page.read_text(encoding="utf-8")
    bad = sorted({p for p in QUOTED_PATH.findall(text) if not any(c in p for c in "*{") and not (ROOT / p).exists()})
    # output folders that a command on the page creates (`--out docs/images/compare`, `out/fit`) exist or are
    # not under a folder of the repository; what is left names a file that is missing
    assert not bad, f"{page.relative_to(ROOT)} names paths that are not in the repository: {bad}"


# --- words for readers who have only the repository -----------------------------------------------

# the project's internal notes and the folder beside the clone they live in: a reader has neither
FORBIDDEN = ["seed.txt", "../shared", "dream-math", "/work/", "architecture.md", "style.md"]

# "seed" is a random seed and nothing else: --seed, seed=0, seed 0, (seed, epoch), the same seed, per seed, ...
SEED = re.compile(r"\bseed\b", re.IGNORECASE)
RANDOM_SEED_BEFORE = re.compile(
    r"(--|\b(random|same|one|per|every|each|a|and|split|its|the split|of the)\s+|[(,]\s*)$", re.IGNORECASE
)
RANDOM_SEED_AFTER = re.compile(r"^(\s*(=|\d|\[|\{|\)|,)|\s+(matters|gives|fixes)\b)", re.IGNORECASE)


def seed_words(line: str) -> list[str]:
    """The uses of the word "seed" in ``line`` that do not read as a random seed."""
    bad = []
    for m in SEED.finditer(line):
        before, after = line[: m.start()], line[m.end() :]
        if after.startswith(("'s", "’s")) or not (RANDOM_SEED_BEFORE.search(before) or RANDOM_SEED_AFTER.match(after)):
            bad.append(line[max(0, m.start() - 30) : m.end() + 30].strip())
    return bad


def test_seed_words_recognise_random_seeds():
    ok = [
        "The splits are seeded by `--seed`:",
        "drop_observations(train, 0.5, seed=0)",
        "(seed 0, Euler rule, no optimizer)",
        "depends only on `(seed, epoch)`",
        "the same seed gives the same bits",
        "accuracy per seed, stiff-step warnings",
        "over seeds [0, 1, 2]",
        "torch.manual_seed(0)",
    ]
    design = ["The seed's quick start works as written", "the seed's rule", "from the seed", "Seed §04"]
    assert [seed_words(s) for s in ok] == [[]] * len(ok)
    assert all(seed_words(s) for s in design)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_no_words_from_outside_the_repository(page):
    lines = read(page)
    bad = [f"line {i}: {w!r}" for i, line in enumerate(lines, 1) for w in FORBIDDEN if w in line.lower()]
    bad += [
        f"line {i}: 'seed' not as a random seed: {s!r}" for i, line in enumerate(lines, 1) for s in seed_words(line)
    ]
    assert not bad, (
        f"{page.relative_to(ROOT)}: say 'the original DREAM-NN description', 'the original DREAM-NN update rule' or "
        "'the Euler rule', and link to pages of the repository:\n" + "\n".join(bad)
    )


# --- tables ---------------------------------------------------------------------------------------

DELIMITER = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")


def cells(row: str) -> int:
    """Cells of a table row as GitHub counts them: split at every ``|`` not escaped as ``\\|``, even in code."""
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return len(re.findall(r"(?<!\\)\|", row)) + 1


def tables(path: Path) -> list[tuple[int, list[tuple[int, str]]]]:
    """(line of the header, [(line, row), ...] with the header and the delimiter first) of every table."""
    lines = prose_lines(path)
    out, k = [], 0
    while k < len(lines) - 1:
        (i, head), (j, delim) = lines[k], lines[k + 1]
        if "|" in head and j == i + 1 and DELIMITER.match(delim) and "|" in delim:
            rows = [(i, head), (j, delim)]
            k += 2
            while k < len(lines) and lines[k][0] == rows[-1][0] + 1 and "|" in lines[k][1] and lines[k][1].strip():
                rows.append(lines[k])
                k += 1
            out.append((i, rows))
        else:
            k += 1
    return out


def test_cells_counts_escaped_pipes_as_text():
    assert cells("| a | b | c |") == 3
    assert cells("a | b") == 2
    assert cells(r"| `x \| y` | z |") == 2
    assert cells("| max |h - h_ref| | NFE |") == 4  # what GitHub makes of a raw pipe


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_table_row_has_the_cells_of_its_header(page):
    bad = []
    for start, rows in tables(page):
        n = cells(rows[0][1])
        bad += [f"line {i}: {cells(r)} cells, the header (line {start}) has {n}" for i, r in rows[1:] if cells(r) != n]
    assert not bad, f"{page.relative_to(ROOT)} (escape a | inside a cell as \\|):\n" + "\n".join(bad)


# --- the slugs, checked against Python-Markdown's own where it is installed -----------------------


def test_mkdocs_slugs_match_python_markdown():
    toc = pytest.importorskip("markdown.extensions.toc")
    texts = [t for p in PAGES for t, _ in headings(p)]
    assert texts
    assert [mkdocs_slug(t) for t in texts] == [toc.slugify(t, "-") for t in texts]


def test_github_slugs_of_known_headings():
    # GitHub's anchors for these headings, as its renderer writes them
    assert github_slug("The C++ kernels (dreamode.native, opt-in)") == "the-c-kernels-dreamodenative-opt-in"
    assert github_slug("The floor of a step, measured") == "the-floor-of-a-step-measured"
    assert github_slug("times or dt, and t0") == "times-or-dt-and-t0"
    assert github_slug("Δt and τ") == "δt-and-τ"
