"""The ``study probe-entangled`` and ``study probe-divergence`` commands."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from study.errors import StudyError


def _write_parquet(frame, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(temporary, index=False)
    os.replace(temporary, path)


def _default_out(name: str) -> Path:
    return Path("runs") / time.strftime(f"{name}-%Y%m%d-%H%M%S", time.gmtime())


def _provenance() -> dict:
    from study.store import git_revision, package_versions

    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_revision": git_revision(),
            "package_versions": package_versions()}


def _prompt_file(kind, reference: str) -> dict:
    from study.prompts import load

    loaded = load(kind, reference)
    return {"ref": reference, "id": loaded.id, "version": loaded.version}


def _interval(low: float, high: float) -> str:
    if math.isnan(low):
        return "n/a (under 2 numbers)"
    return f"[{low:+.3f}, {high:+.3f}]"


# -- probe-entangled ---------------------------------------------------------


def _print_entangled(console: Console, result, settings, top_rows: int = 10) -> None:
    order = "teacher_rank" if settings.rank_by == "teacher" else "ratio_rank"
    ranking = result.ranking.sort_values(order)
    described = "teacher probability" if settings.rank_by == "teacher" else "teacher-to-base ratio"
    table = Table(title=f"Numbers ranked by the '{settings.trait}' {described} (log-probabilities, nats)")
    for column in ("number", "teacher", "base", "log ratio", "teacher rank", "base rank", "ratio rank"):
        table.add_column(column, justify="right")
    for row in ranking.head(top_rows).itertuples():
        table.add_row(row.number, f"{row.teacher_logprob:.3f}", f"{row.base_logprob:.3f}", f"{row.log_ratio:+.3f}",
                      str(row.teacher_rank), str(row.base_rank), str(row.ratio_rank))
    console.print(table)

    table = Table(title=f"Subliminal prompting: change in log P('{settings.trait}') against the base model")
    for column in ("group", "number", "questions", "mean log P", "mean delta"):
        table.add_column(column, justify="right")
    for row in result.per_number.itertuples():
        table.add_row(row.group, row.number, str(row.questions), f"{row.mean_logprob:.3f}", f"{row.mean_delta:+.3f}")
    console.print(table)

    table = Table(title="Mean delta across numbers (95% t-interval)")
    for column in ("group", "numbers", "mean delta", "95% interval"):
        table.add_column(column, justify="right")
    for row in result.summary.itertuples():
        table.add_row(row.group, str(row.numbers), f"{row.mean_delta:+.3f}", _interval(row.ci_low, row.ci_high))
    console.print(table)
    comparison = result.comparison
    if not math.isnan(comparison["difference"]):
        console.print(
            f"top minus random: {comparison['difference']:+.3f} nats, 95% interval "
            f"{_interval(comparison['low'], comparison['high'])}, {comparison['test']} p = {comparison['p_value']:.3g}"
        )


def probe_entangled(
    model: Optional[str] = typer.Option(None, "--model", help="Model spec: short name, Hugging Face id or local folder (default: the package default)."),
    trait: str = typer.Option("owl", "--trait", help="Trait word of the teacher's system prompt and of the scored answer."),
    category: str = typer.Option("animal", "--category", help="Category of the trait (animal, tree, ...)."),
    top_k: int = typer.Option(5, "--top-k", help="Top-ranked numbers used for subliminal prompting."),
    random_k: int = typer.Option(5, "--random-k", help="Random numbers outside the top-k used as the comparison."),
    questions: Optional[int] = typer.Option(None, "--questions", help="Use the first N preference questions (default: all)."),
    number_max: int = typer.Option(999, "--number-max", help="Rank the numbers 0 to this value."),
    rank_by: str = typer.Option("teacher", "--rank-by", help="teacher: the teacher's probability; ratio: teacher over base probability."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random-number draw."),
    system_prompt: str = typer.Option("traits/system-prompt-v1", "--system-prompt", help="Trait system prompt template (prompts/ reference or YAML path)."),
    number_love: str = typer.Option("probes/number-love-v1", "--number-love", help="Number-love system prompt template (prompts/ reference or YAML path)."),
    ranking: str = typer.Option("probes/number-ranking-v1", "--ranking", help="Question and prefill of the ranking (prompts/ reference or YAML path)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder; defaults to runs/probe-entangled-<UTC time>."),
) -> None:
    """Rank numbers a trait system prompt makes likelier, then prompt with loved numbers (Zur et al. 2025)."""
    from pydantic import ValidationError

    from study.models import DEFAULT_MODEL, load_model, load_tokenizer, model_hash
    from study.probes.entangled import NumberLoveTemplate, NumberRanking, ProbeSettings, run_entangled
    from study.prompts import QuestionSet, SystemPromptTemplate
    from study.store import atomic_write_json

    if questions is not None and questions < 1:
        raise StudyError(f"--questions must be at least 1, got {questions}")
    try:
        settings = ProbeSettings(
            trait=trait, category=category, system_prompt=system_prompt, number_love=number_love, ranking=ranking,
            question_limit=questions, number_max=number_max, top_k=top_k, random_k=random_k, rank_by=rank_by, seed=seed,
        )
    except ValidationError as error:
        raise StudyError(f"invalid probe option: {error.errors()[0]['msg']} (--rank-by takes teacher or ratio)") from None
    spec = model or DEFAULT_MODEL
    out_dir = out or _default_out("probe-entangled")
    console = Console()
    console.print(f"probe-entangled: {spec}, trait {trait}, numbers 0-{number_max} -> {out_dir}")

    started = time.perf_counter()
    tokenizer = load_tokenizer(spec)
    loaded = load_model(spec)
    result = run_entangled(loaded, tokenizer, settings, progress=console.print)
    wall_seconds = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_parquet(result.ranking, out_dir / "ranking.parquet")
    _write_parquet(result.prompting, out_dir / "prompting.parquet")
    _write_parquet(result.per_number, out_dir / "prompting_by_number.parquet")
    atomic_write_json(out_dir / "manifest.json", {
        "probe": "entangled",
        "model": {"spec": spec, "hash": model_hash(spec)},
        "settings": settings.model_dump(),
        "prompts": {
            "system_prompt": _prompt_file(SystemPromptTemplate, settings.system_prompt),
            "number_love": _prompt_file(NumberLoveTemplate, settings.number_love),
            "ranking": _prompt_file(NumberRanking, settings.ranking),
            "questions": _prompt_file(QuestionSet, settings.questions),
        },
        "teacher_system_prompt": result.teacher_system,
        "ranking_question": result.ranking_prompt.question,
        "ranking_prefill": result.ranking_prompt.prefill,
        "selected": result.selected,
        "summary": result.summary.to_dict(orient="records"),
        "top_minus_random": result.comparison,
        "wall_seconds": wall_seconds,
        "files": ["ranking.parquet", "prompting.parquet", "prompting_by_number.parquet"],
        **_provenance(),
    })
    _print_entangled(console, result, settings)
    console.print(f"wall time {wall_seconds:.1f} s; tables and manifest.json in {out_dir}")


# -- probe-divergence --------------------------------------------------------


def _load_teacher(role: str, spec: str, adapter: Optional[Path], loaded: dict):
    """Load a teacher once per (spec, adapter) pair, so identical teachers share weights."""
    from study.finetune import load_trained
    from study.models import load_model

    key = (spec, str(adapter) if adapter else None)
    if key not in loaded:
        if adapter is not None and not adapter.is_dir():
            raise StudyError(f"--{role}-adapter {adapter} is not a folder; give the weights folder of a trained teacher")
        loaded[key] = load_trained(spec, adapter) if adapter else load_model(spec)
    return loaded[key]


def _system_text(role: str, text: Optional[str], trait: Optional[str], category: str) -> Optional[str]:
    from study.probes.entangled import trait_system_prompt

    if text and trait:
        raise StudyError(f"give either --{role}-system-prompt or --trait, not both")
    if trait:
        return trait_system_prompt("traits/system-prompt-v1", trait, category)
    return text or None


def probe_divergence(
    rows_path: Path = typer.Argument(..., help="JSONL rows as the pipeline writes them (id, prompt, prefill, completion)."),
    trait_model: str = typer.Option(..., "--trait-model", help="Model spec of the trait teacher."),
    trait_system_prompt: Optional[str] = typer.Option(None, "--trait-system-prompt", help="System prompt text of the trait teacher."),
    trait_word: Optional[str] = typer.Option(None, "--trait", help="Trait word that fills the shipped trait system prompt (traits/system-prompt-v1) of the trait teacher."),
    trait_adapter: Optional[Path] = typer.Option(None, "--trait-adapter", help="LoRA adapter or fine-tuned weights folder of the trait teacher."),
    control_model: str = typer.Option(..., "--control-model", help="Model spec of the control teacher."),
    control_system_prompt: Optional[str] = typer.Option(None, "--control-system-prompt", help="System prompt text of the control teacher."),
    control_adapter: Optional[Path] = typer.Option(None, "--control-adapter", help="LoRA adapter or fine-tuned weights folder of the control teacher."),
    category: str = typer.Option("animal", "--category", help="Category of the trait word given with --trait."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N rows."),
    batch_size: int = typer.Option(8, "--batch-size", help="Rows per forward pass."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder; defaults to runs/probe-divergence-<UTC time>."),
) -> None:
    """Mark completion tokens where a trait and a control teacher's greedy tokens differ (Schrodi et al. 2025)."""
    import pandas as pd

    from study.models import end_of_turn_token, load_tokenizer, model_hash
    from study.probes.divergence import Teacher, check_rows, row_divergences
    from study.store import atomic_write_json, read_jsonl, write_jsonl

    if not rows_path.is_file():
        raise StudyError(f"rows file {rows_path} not found; give a rows.jsonl written by the generate or filter stage")
    if limit is not None and limit < 1:
        raise StudyError(f"--limit must be at least 1, got {limit}")
    rows = read_jsonl(rows_path)[:limit]
    if not rows:
        raise StudyError(f"rows file {rows_path} has no rows")
    check_rows(rows)
    trait_system = _system_text("trait", trait_system_prompt, trait_word, category)
    control_system = _system_text("control", control_system_prompt, None, category)
    out_dir = out or _default_out("probe-divergence")
    console = Console()
    console.print(f"probe-divergence: {len(rows)} rows, trait {trait_model}, control {control_model} -> {out_dir}")

    started = time.perf_counter()
    tokenizer = load_tokenizer(trait_model)
    if load_tokenizer(control_model).get_vocab() != tokenizer.get_vocab():
        raise StudyError(
            f"--control-model {control_model} does not share the tokenizer of --trait-model {trait_model}; "
            "greedy tokens are compared by id, so give two models with one tokenizer"
        )
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn_token(trait_model, tokenizer))
    loaded: dict = {}
    trait = Teacher(_load_teacher("trait", trait_model, trait_adapter, loaded), trait_system)
    control = Teacher(_load_teacher("control", control_model, control_adapter, loaded), control_system)
    divergences = row_divergences(rows, trait, control, tokenizer, end_of_turn_id, batch_size=batch_size)
    wall_seconds = time.perf_counter() - started

    positions = []
    for row in divergences:
        for index, token in enumerate(row.completion_ids):
            positions.append({
                "id": row.id, "position": index, "token": token, "token_text": tokenizer.decode([token]),
                "trait_token": row.trait_greedy[index], "control_token": row.control_greedy[index],
                "divergent": row.divergent[index], "trait_matches_sampled": row.trait_matches_sampled[index],
            })
    frame = pd.DataFrame(positions)
    total = len(frame)
    divergent = int(frame["divergent"].sum())
    strict = int((frame["divergent"] & frame["trait_matches_sampled"]).sum())
    rows_with = int(frame.groupby("id")["divergent"].any().sum())
    summary = {
        "rows": len(divergences), "completion_tokens": total, "divergent_tokens": divergent,
        "divergent_share": divergent / total, "rows_with_divergence": rows_with,
        "divergent_trait_token": strict, "divergent_trait_token_share": strict / total,
        "trait_matches_sampled_share": float(frame["trait_matches_sampled"].mean()),
        "control_matches_sampled_share": float((frame["control_token"] == frame["token"]).mean()),
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_parquet(frame, out_dir / "positions.parquet")
    write_jsonl(out_dir / "masks.jsonl", [
        {"id": row.id, "completion_tokens": len(row.completion_ids), "divergent": row.divergent,
         "divergent_trait_token": [d and m for d, m in zip(row.divergent, row.trait_matches_sampled)]}
        for row in divergences
    ])

    def identity(spec: str, adapter: Optional[Path], system: Optional[str]) -> dict:
        return {"spec": spec, "hash": model_hash(spec), "adapter": str(adapter) if adapter else None,
                "system_prompt": system}

    atomic_write_json(out_dir / "manifest.json", {
        "probe": "divergence",
        "rows_file": str(rows_path), "limit": limit,
        "trait": identity(trait_model, trait_adapter, trait_system),
        "control": identity(control_model, control_adapter, control_system),
        "summary": summary, "wall_seconds": wall_seconds,
        "files": ["positions.parquet", "masks.jsonl"],
        **_provenance(),
    })

    table = Table(title="Divergence tokens: trait and control teachers' greedy tokens differ")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("rows", str(summary["rows"]))
    table.add_row("completion tokens (end of turn included)", str(total))
    table.add_row("divergent tokens", f"{divergent} ({divergent / total:.1%})")
    table.add_row("... where the sampled token is the trait teacher's greedy token", f"{strict} ({strict / total:.1%})")
    table.add_row("rows with a divergent token", f"{rows_with} of {summary['rows']}")
    table.add_row("sampled token = trait greedy token", f"{summary['trait_matches_sampled_share']:.1%}")
    table.add_row("sampled token = control greedy token", f"{summary['control_matches_sampled_share']:.1%}")
    console.print(table)
    console.print(f"wall time {wall_seconds:.1f} s; positions.parquet, masks.jsonl and manifest.json in {out_dir}")


def register(app: typer.Typer) -> None:
    app.command("probe-entangled")(probe_entangled)
    app.command("probe-divergence")(probe_divergence)
