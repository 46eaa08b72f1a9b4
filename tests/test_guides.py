"""The README and the guides as files: the README short, plain GitHub Markdown whose links stay
inside the repository and resolve there; each guide in the docs' Guides toctree, opening with
what it is for; the guides' links, anchors and images pointing at something that exists.

(That their examples run is tests/test_readme.py; that the site builds from them and links
work there is tests/test_docs.py.)"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
GUIDES = sorted((DOCS / "guides").glob("*.md"))
MAX_README_LINES = 250

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(([^)\s]+)\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:")  # https:, mailto:


def _prose(text):
    """The lines outside fenced code blocks."""
    out, fence = [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if m:
            fence = None if fence == m.group(1) else (fence or m.group(1))
            continue
        if fence is None:
            out.append(line)
    return out


def _links(path):
    """``(is_image, target)`` of each Markdown link outside code (inline code left out)."""
    found = []
    for line in _prose(path.read_text()):
        line = re.sub(r"`[^`]*`", "", line)
        found += [(bool(m.group(1)), m.group(3)) for m in _LINK.finditer(line)]
    return found


def _slug(heading):
    """A heading's anchor as GitHub and MyST (``myst_heading_anchors``) make it."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(path):
    return {_slug(line.lstrip("#")) for line in _prose(path.read_text())
            if re.match(r"^#{1,6} ", line)}


def _guide_toctree():
    """The entries of docs/index.md's toctree captioned Guides, in order."""
    text = (DOCS / "index.md").read_text()
    trees = re.findall(r"^```\{toctree\}\n(.*?)^```", text, flags=re.S | re.M)
    guides = [t for t in trees if re.search(r"^:caption: Guides$", t, re.M)]
    assert len(guides) == 1, "docs/index.md has no single toctree captioned Guides"
    return [line.strip() for line in guides[0].splitlines()
            if line.strip() and not line.startswith(":")]


def test_the_readme_is_at_most_250_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, len(lines)


def test_the_readme_has_no_path_outside_the_repository():
    text = README.read_text()
    assert "../" not in text
    assert not re.search(r"(?<![\w.])/(work|home|tmp|shared)/", text)


def test_the_readme_is_plain_github_markdown_for_users():
    text = README.read_text()
    assert not re.search(r"\{(func|class|mod|meth|doc|ref)\}`", text)  # no MyST roles
    assert "```{" not in text  # no MyST directives
    # No dates of runs and nothing about how the project is made, in what users read.
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text)
    assert not re.search(r"\bsessions?\b|\blent\b|\bissue \d", text, re.I)


def test_the_readme_links_resolve_in_the_repository():
    links = _links(README)
    assert any(t.startswith("docs/guides/") for _, t in links)
    for _, target in links:
        if _EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / path).resolve() if path else README
        assert file.is_relative_to(ROOT) and file.exists(), target
        if anchor:
            assert anchor in _anchors(file), target


def test_each_guide_is_in_the_docs_index_toctree():
    entries = _guide_toctree()
    assert sorted(entries) == sorted(f"guides/{g.stem}" for g in GUIDES)
    assert len(entries) == len(set(entries))
    assert entries[0] == "guides/getting-started"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_a_guide_opens_with_its_title_and_what_it_is_for(guide):
    lines = guide.read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines[0]) > 3
    first_section = next((i for i, line in enumerate(lines) if line.startswith("## ")),
                         len(lines))
    opening = " ".join(lines[1:first_section]).split()
    assert len(opening) >= 25, "the opening paragraph says what the page is for"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_a_guides_links_and_images_resolve(guide):
    """Links between guides (with their anchors), to the API pages, the figures and the
    executed notebooks (docs/notebooks/0N_name.ipynb, built from colabs/0N_name.ipynb)."""
    for is_image, target in _links(guide):
        if _EXTERNAL.match(target):
            assert not is_image, f"{guide.name}: an image from another host: {target}"
            continue
        path, _, anchor = target.partition("#")
        file = (guide.parent / path).resolve() if path else guide
        assert file.is_relative_to(DOCS), f"{guide.name}: {target} is outside docs/"
        if file.parent == DOCS / "notebooks":
            assert file.suffix == ".ipynb" and (ROOT / "colabs" / file.name).exists(), target
            continue
        assert file.exists(), f"{guide.name}: {target}"
        if is_image:
            assert file.suffix == ".png", target
        if anchor:
            assert anchor in _anchors(file), f"{guide.name}: no heading for {target}"
