"""The documentation site: ``make docs`` builds it with warnings as errors.

One build (the same command as ``make docs``, into a temporary folder) is shared
by the tests below. It checks that the site has a page per public module holding
every name of the module's ``__all__``, that the Linen and NNX modules and the
recurrent specs document each of their fields, that the notebooks' pages show
what the notebooks printed and drew, and that each hand-written guide of
docs/guides is a page of the Guides toctree whose tables, figures, equations and
links work.

The build executes the notebooks of colabs/ unless docs/notebooks/ already holds
them executed from the same inputs (see docs/generate.py): from a fresh clone it
takes a few minutes on a 2-core CPU. They are executed first, by the
``executed_notebooks`` fixture that tests/test_notebooks.py shares, so that they
run once for both files.
"""

import dataclasses
import html
import importlib
import inspect
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

_DOCS = "the docs extra is not installed: pip install 'lnjax[docs]' (make test installs it)"
for _module in ("sphinx", "myst_nb", "sphinx_book_theme", "nbclient"):
    pytest.importorskip(_module, reason=_DOCS)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BUILD_SECONDS = 900  # a stuck build fails instead of hanging the suite

# Each public module and its page.
PAGES = {
    "lnjax": "api/lnjax.html",
    "lnjax.normalization": "api/normalization.html",
    "lnjax.linen": "api/linen.html",
    "lnjax.nnx": "api/nnx.html",
    "lnjax.recurrent": "api/recurrent.html",
    "lnjax.kernels": "api/kernels.html",
    "lnjax.training": "api/training.html",
    "lnjax.steps": "api/steps.html",
    "lnjax.parallel": "api/parallel.html",
    "lnjax.checkpoint": "api/checkpoint.html",
    "lnjax.checksums": "api/checkpoint.html",
    "lnjax.data": "api/data.html",
    **{f"lnjax.datasets.{m}": "api/datasets.html" for m in ("idx", "folders", "cli")},
}
# lnjax.datasets modules whose public names lnjax.data re-exports: each name is on the
# datasets page or, as lnjax.data's, on the data page (documented once).
DATASETS_REEXPORTED = ("checksums", "tfds_source", "splits", "core", "loading")
EXPERIMENTS = ("driver", "settings", "runs", "results", "tables", "plots", "common",
               "invariance", "pi_mnist", "seq_mnist", "convnet", "transformer")
EXPERIMENT_PARTS = ("settings", "runs", "results", "tables", "plots", "common")  # no command
NOTEBOOKS = sorted(p.stem for p in (ROOT / "colabs").glob("*.ipynb"))


@dataclasses.dataclass
class Site:
    out: Path
    returncode: int
    log: str
    seconds: float

    def page(self, path):
        file = self.out / path
        assert file.exists(), f"no page {path}"
        return file.read_text()

    def text(self, path):
        """The page's text, without tags (so code reads as written, not highlighted)."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.page(path)))


@pytest.fixture(scope="module")
def site(tmp_path_factory, executed_notebooks):
    out = tmp_path_factory.mktemp("docs") / "html"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS),
         str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=BUILD_SECONDS)
    seconds = time.monotonic() - start
    print(f"docs build: {seconds:.0f} s")
    return Site(out, proc.returncode, proc.stdout + proc.stderr, seconds)


def _anchor(qualname):
    return f'id="{qualname}"'


def test_the_build_succeeds_with_warnings_as_errors(site):
    assert site.returncode == 0, site.log[-6000:]
    assert "build succeeded" in site.log
    problems = [line for line in site.log.splitlines() if "WARNING:" in line or "ERROR:" in line]
    assert not problems, problems


@pytest.mark.parametrize("module", sorted(PAGES))
def test_a_page_per_public_module_with_every_public_name(site, module):
    page = site.page(PAGES[module])
    mod = importlib.import_module(module)
    assert mod.__all__, module
    missing = [n for n in mod.__all__ if _anchor(f"{module}.{n}") not in page]
    assert not missing, f"{PAGES[module]} lacks {missing}"


@pytest.mark.parametrize("name", DATASETS_REEXPORTED)
def test_every_public_name_of_the_data_layer_is_documented_once(site, name):
    module = importlib.import_module(f"lnjax.datasets.{name}")
    datasets, data = site.page("api/datasets.html"), site.page("api/data.html")
    assert module.__all__, name
    missing = [n for n in module.__all__
               if _anchor(f"lnjax.datasets.{name}.{n}") not in datasets
               and _anchor(f"lnjax.data.{n}") not in data]
    assert not missing, f"neither api/datasets.html nor api/data.html documents {missing}"


def _public_names(mod):
    """The functions and classes a module defines itself, without a leading underscore."""
    return sorted(n for n, obj in vars(mod).items()
                  if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                  and obj.__module__ == mod.__name__)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_the_experiments_page_documents_each_experiment_module(site, name):
    page = site.page("api/experiments.html")
    module = f"lnjax.experiments.{name}"
    mod = importlib.import_module(module)
    assert _anchor(f"module-{module}") in page
    names = _public_names(mod)
    assert "main" in names or name in EXPERIMENT_PARTS
    missing = [n for n in names if _anchor(f"{module}.{n}") not in page]
    assert not missing, f"api/experiments.html lacks {missing} of {module}"


def _linen_fields(cls):
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def _nnx_instance(cls):
    from flax import nnx

    rngs = nnx.Rngs(0)
    if cls.__name__ == "GroupNorm":
        return cls(4, num_groups=2, rngs=rngs)
    if cls.__name__.startswith("LN") or cls.__name__ == "WeightNormLinear":
        return cls(3, 4, rngs=rngs)
    return cls(4, rngs=rngs)


def test_module_classes_document_each_field_in_attributes(site):
    """Each Linen module's dataclass fields, each attribute an NNX module holds, and each
    recurrent spec's fields have an entry of the class's Attributes section."""
    from lnjax import linen, nnx, recurrent

    missing = []
    page = site.page("api/linen.html")
    for name in linen.__all__:
        missing += [f"lnjax.linen.{name}.{f}" for f in _linen_fields(getattr(linen, name))
                    if _anchor(f"lnjax.linen.{name}.{f}") not in page]
    page = site.page("api/nnx.html")
    for name in nnx.__all__:
        held = [k for k in vars(_nnx_instance(getattr(nnx, name))) if not k.startswith("_")]
        assert held, name
        missing += [f"lnjax.nnx.{name}.{k}" for k in held
                    if _anchor(f"lnjax.nnx.{name}.{k}") not in page]
    page = site.page("api/recurrent.html")
    for name in ("CellSpec", "LSTMSpec", "GRUSpec", "SimpleSpec"):
        fields = [f.name for f in dataclasses.fields(getattr(recurrent, name))]
        missing += [f"lnjax.recurrent.{name}.{f}" for f in fields
                    if _anchor(f"lnjax.recurrent.{name}.{f}") not in page]
    assert not missing, f"undocumented fields: {missing}"


def test_equations_in_docstrings_render_as_maths(site):
    page = site.page("api/lnjax.html")
    assert 'class="math' in page and "mathjax" in page.lower()
    assert r"\mathrm{LN}(x)" in html.unescape(page)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_pages_show_their_outputs(site, executed_notebooks, name):
    page = site.page(f"notebooks/{name}.html")
    assert 'class="cell_output' in page
    images = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert any("_images/" in src for src in images), "no figure"
    for src in images:
        if not src.startswith(("http:", "https:", "data:")):
            assert (site.out / "notebooks" / src).resolve().exists(), src
    text = site.text(f"notebooks/{name}.html")
    assert "Traceback (most recent call last)" not in text
    # Something the notebook printed: a version line, or the benchmark's machine.
    assert re.search(r"lnjax \d+\.\d+\.\d+|'cpu':", text), "no printed output"
    # The settings cell the build inserted is hidden, a note names the settings, and the
    # notebook's own cells are shown as written.
    settings = executed_notebooks[1][f"{name}.ipynb"]  # what the build gave the notebook
    if settings:
        hidden = "\n".join(f"{key} = {value!r}" for key, value in settings.items())
        assert hidden not in text
        assert "The outputs on this page come from a run made when the documentation" in text
        assert all(f"{key} = {value!r}" in text for key, value in settings.items())
        assert "FULL = False" in text


GUIDES = [p.stem for p in sorted((DOCS / "guides").glob("*.md"))]


def _guide_title(name):
    return (DOCS / "guides" / f"{name}.md").read_text().splitlines()[0].removeprefix("# ")


def _article(site, path):
    """The page's article: its own content, without the theme's navigation."""
    page = site.page(path)
    found = re.search(r"<article[^>]*>(.*)</article>", page, flags=re.S)
    assert found, f"{path}: no <article>"
    return found.group(1)


def test_each_guide_is_a_page_of_the_guides_toctree_in_its_order(site):
    index = site.page("index.html")
    order = re.findall(r"^(guides/[\w-]+)$", (DOCS / "index.md").read_text(), flags=re.M)
    assert sorted(order) == sorted(f"guides/{g}" for g in GUIDES) and len(GUIDES) >= 6
    for entry in order:
        path = f"{entry}.html"
        title = _guide_title(entry.removeprefix("guides/"))
        assert html.escape(title, quote=False) in site.page(path), path
        assert f'href="{path}"' in index, path
    linked = re.findall(r'href="(guides/[\w-]+)\.html"', _article(site, "index.html"))
    assert list(dict.fromkeys(linked)) == order, "the landing page lists the guides in order"
    assert order[0] == "guides/getting-started"


@pytest.mark.parametrize("name", GUIDES)
def test_a_guides_links_and_images_work_in_the_site(site, name):
    """Every link of the guide's article reaches a file of the site (an anchor, an id of the
    page it names); every image is a file of the site; every Markdown table is a table."""
    path = site.out / "guides" / f"{name}.html"
    article = _article(site, f"guides/{name}.html")
    for href in re.findall(r'<a\s[^>]*href="([^"]*)"', article):
        href = html.unescape(href)
        if href.startswith(("http:", "https:", "mailto:")) or href in ("", "#"):
            continue
        target, _, anchor = href.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.exists(), f"guides/{name}.html: broken link {href}"
        if anchor and file.suffix == ".html":
            assert f'id="{anchor}"' in file.read_text(), f"guides/{name}.html: {href}"
    for src in re.findall(r'<img[^>]+src="([^"]+)"', article):
        assert not src.startswith(("http:", "https:", "//")), src
        assert (path.parent / src).resolve().exists(), f"guides/{name}.html: image {src}"
    assert not re.search(r"<p>\s*\|", article), f"guides/{name}.html: a table shown as pipe text"
    assert "{func}" not in article and "{class}" not in article  # MyST roles were parsed


def test_the_guides_show_what_they_link_to(site):
    """The figures, the links between guides and API pages, the notebooks and the maths."""
    experiments = _article(site, "guides/experiments.html")
    for figure in ("pi_mnist_demo", "seq_mnist", "convnet", "transformer"):
        assert re.search(rf'<img[^>]+src="\.\./_images/{figure}\.png"', experiments), figure
        assert (site.out / "_images" / f"{figure}.png").exists()
        assert re.search(rf'href="\.\./_downloads/[^"]*/{figure}\.pdf"', experiments), figure
    assert experiments.count("<table") >= 5
    started = _article(site, "guides/getting-started.html")
    assert 'href="../api/lnjax.html#lnjax.layer_norm"' in started  # {func}`lnjax.layer_norm`
    assert 'href="installation.html"' in started
    speed = _article(site, "guides/speed-and-accuracy.html")
    assert 'href="equations.html#how-lnjax-computes-the-statistics"' in speed
    headers = {re.sub(r"<[^>]+>", "", h).strip()
               for h in re.findall(r"<th[^>]*>(.*?)</th>", speed, flags=re.S)}
    assert "flax / lnjax" in headers and not headers & {"met", "target"}  # results, no tracker
    assert 'href="speed-and-accuracy.html#on-accelerators"' in _article(
        site, "guides/functions-and-modules.html")
    notebooks = _article(site, "guides/notebooks.html")
    for name in NOTEBOOKS:
        assert f'href="../notebooks/{name}.html"' in notebooks, name
    equations = _article(site, "guides/equations.html")
    assert equations.count('class="math') >= 4
    assert r"\mathrm{LN}" in html.unescape(equations)


def test_the_landing_page(site):
    index = site.page("index.html")
    text = site.text("index.html")
    assert "Exact layer normalization for JAX and Flax" in text  # the introduction
    assert "lnjax.layer_norm(x" in text  # the short example
    assert 'href="guides/getting-started.html"' in index
    for path in PAGES.values():
        assert f'href="{path}"' in index, path
    assert 'href="api/experiments.html"' in index
    for name in NOTEBOOKS:
        assert f'href="notebooks/{name}.html"' in index, name


def test_no_page_loads_a_script_from_another_host(site):
    """The equations render offline: MathJax (and every other script) comes with the site."""
    remote = {}
    for page in sorted(site.out.rglob("*.html")):
        found = re.findall(r'<script[^>]*\ssrc="((?:https?:)?//[^"]*)"', page.read_text())
        if found:
            remote[str(page.relative_to(site.out))] = found
    assert not remote, remote
    math_pages = [p for p in site.out.rglob("*.html") if "mathjax" in p.read_text().lower()]
    assert math_pages  # the pages with equations do load a (local) MathJax


def test_notebook_tables_render_as_tables(site):
    """Every Markdown table a notebook displays is an HTML table, never pipe text."""
    tables = 0
    for name in NOTEBOOKS:
        page = site.page(f"notebooks/{name}.html")
        outputs = re.findall(r'<div class="cell_output docutils container">(.*?)</div>\s*</div>',
                             page, flags=re.S)
        piped = [o for o in outputs if re.search(r"<p>\s*\|", o)]
        assert not piped, (name, piped[0][:300])
        tables += sum(o.count("<table") for o in outputs)
    assert tables >= 1
