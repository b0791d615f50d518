"""Run one experiment end to end, stage by stage, reusing finished stages.

Stages and what their content hash covers:

1. ``teacher``: a finetuned teacher's LoRA adapter (base model hash, trait
   set version, training settings, seed).
2. ``generate``: one writer's completions to the shared number prompts
   (writer identity, prompt template version, count, seed, decoding).
   Rows are appended batch by batch, so a killed run resumes mid-stage.
3. ``filter``: kept rows and a report of reject reasons.
4. ``student``: a fine-tuned student per seed (rows hash, loss, settings).
5. ``eval``: samples and log-probabilities of one evaluated model, with the
   condition columns of the tidy tables.

Results are then assembled from the eval stages alone.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from study import prompts as prompt_files
from study.config import BASE_WRITER, ExperimentConfig, StudentConfig, TeacherConfig
from study.context import (
    max_rows_that_fit,
    messages_builder,
    resolve_n,
    sample_rows,
)
from study.errors import StudyError
from study.evaluation import evaluate_model
from study.filter import filter_rows
from study.finetune import answer_token_ids, load_trained, tokenize_example, train
from study.generate import (
    Decoding,
    GenerationRequest,
    check_vllm_backend,
    generate_all,
    generate_all_vllm,
    stop_token_ids,
)
from study.models import end_of_turn_token, load_model, load_tokenizer, model_hash, resolve_model
from study.numbers import generate_prompts
from study.progress import progress_bar
from study.store import RowLog, RunStore, Stage, content_hash, read_jsonl, write_jsonl
from study.teacher import messages, system_prompt, trait_rows

log = logging.getLogger(__name__)


def prompt_version(kind, reference: str) -> dict:
    loaded = prompt_files.load(kind, reference)
    return {"ref": reference, "id": loaded.id, "version": loaded.version, "hash": content_hash(loaded.model_dump())}


@dataclass
class RowSet:
    """Filtered rows of one writer, after the size cap."""

    writer: str
    rows: list[dict]
    report: dict
    stage: Stage

    @property
    def digest(self) -> str:
        return content_hash([[row["id"], row["answer"]] for row in self.rows])


@dataclass
class Runner:
    config: ExperimentConfig
    store: RunStore
    dry_run: bool = False
    plan: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    eval_stages: list[Stage] = field(default_factory=list)
    row_transform: Callable[[RowSet], RowSet] | None = None
    """Derives each teacher's own rows after the size cap (the suite's shuffled-numbers control)."""

    # -- identities ---------------------------------------------------------

    def __post_init__(self):
        self.base_identity = {"spec": self.config.model, "hash": model_hash(self.config.model)}
        self.stop_ids: list[int] | None = None
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.model, self.config.trust_remote_code)
            eot = end_of_turn_token(self.config.model, self._tokenizer)
            self.stop_ids = stop_token_ids(self._tokenizer, eot)
            self.end_of_turn_id = self._tokenizer.convert_tokens_to_ids(eot)
        return self._tokenizer

    def _timed(self, label: str, seconds: float) -> None:
        self.timings[label] = self.timings.get(label, 0.0) + seconds

    def _run_stage(self, stage: Stage, label: str, work: Callable[[Path], dict | None], estimate: str) -> bool:
        """Run ``work`` into the stage folder unless it is complete; return whether it ran."""
        self.plan.setdefault(stage.name, {"stage": stage.name, "label": label, "cached": stage.complete, "work": estimate})
        if stage.complete or self.dry_run:
            return False
        with stage.lock():
            # Another process may have finished the stage while this one waited.
            if stage.complete:
                return False
            self.store.record(stage, "running", label)
            started = time.time()
            try:
                extra = work(stage.workdir())
            except BaseException as error:
                self.store.record(stage, "failed", label, error=f"{error.__class__.__name__}: {error}")
                raise
            seconds = time.time() - started
            stage.finish(extra, seconds)
        self.store.record(stage, "done", label, wall_seconds=seconds)
        self._timed(stage.kind, seconds)
        log.info("%s done in %.1f s", label, seconds)
        return True

    # -- teachers -----------------------------------------------------------

    def teacher_stage(self, teacher: TeacherConfig) -> Stage | None:
        if teacher.kind != "finetuned":
            return None
        key = {
            "base": self.base_identity,
            "trait": teacher.trait,
            "category": teacher.category,
            "trait_set": prompt_version(prompt_files.TraitSet, teacher.trait_set),
            "examples": teacher.trait_examples,
            "seed": teacher.seed,
            "finetune": teacher.finetune.model_dump(),
        }
        stage = self.store.stage("teacher", key)

        def work(folder: Path) -> dict:
            rows = trait_rows(teacher)
            write_jsonl(folder / "trait_rows.jsonl", rows)
            tokenizer = self.tokenizer
            examples = [
                tokenize_example(tokenizer, row["id"], messages(None, row["prompt"]), "", row["completion"],
                                 self.end_of_turn_id, teacher.finetune.max_length)
                for row in rows
            ]
            total = len(examples) * teacher.finetune.epochs
            with progress_bar(f"train teacher {teacher.name}", total, "examples") as advance:
                summary = train(self.config.model, examples, teacher.finetune, teacher.seed, "sft",
                                tokenizer.pad_token_id, folder / "weights", progress=advance,
                                trust_remote_code=self.config.trust_remote_code)
            return {"training": {k: v for k, v in summary.items() if k != "row_ids"}, "trait_rows": len(rows)}

        estimate = f"{teacher.trait_examples} x {teacher.finetune.epochs} epochs"
        self._run_stage(stage, f"teacher {teacher.name}", work, estimate)
        return stage

    def teacher_identity(self, teacher: TeacherConfig | None) -> dict:
        if teacher is None:
            return {"base": self.base_identity, "system_prompt": None}
        stage = self.teacher_stage(teacher)
        return {
            "base": self.base_identity,
            "kind": teacher.kind,
            "adapter": stage.digest if stage else None,
            "system_prompt": system_prompt(teacher),
        }

    def load_teacher_model(self, teacher: TeacherConfig | None, dtype: str = "float32"):
        stage = self.teacher_stage(teacher) if teacher else None
        if stage is not None:
            return load_trained(self.config.model, stage.path / "weights", self.config.trust_remote_code, dtype)
        return load_model(self.config.model, dtype=dtype, trust_remote_code=self.config.trust_remote_code)

    # -- data ---------------------------------------------------------------

    def writer_teacher(self, writer: str) -> TeacherConfig | None:
        return None if writer == BASE_WRITER else self.config.teacher(writer)

    def generate_stage(self, writer: str, decoding: Decoding) -> Stage:
        teacher = self.writer_teacher(writer)
        data = self.config.data
        template_ref = prompt_version(prompt_files.NumbersTemplate, data.template)
        dtype = self.config.dtype
        key = {
            "writer": self.teacher_identity(teacher),
            "numbers": template_ref,
            "prompts": data.prompts,
            "seed": data.seed,
            "decoding": decoding.stage_key(),
            "dtype": dtype,
        }
        stage = self.store.stage("generate", key)

        def work(folder: Path) -> dict:
            number_prompts = generate_prompts(prompt_files.numbers_template(data.template), data.prompts, data.seed)
            system = system_prompt(teacher) if teacher else None
            requests = [
                GenerationRequest(messages(system, p.text), p.prefill() if decoding.prefill == "seeds" else "")
                for p in number_prompts
            ]
            rows = RowLog(folder / "rows.jsonl")
            if rows.rows:
                log.info("generate %s: resuming with %d of %d rows already written", writer, len(rows.rows), len(requests))
            tokenizer = self.tokenizer
            if decoding.backend == "vllm":
                # Fail before any model loads when vLLM or a GPU is missing.
                check_vllm_backend()
                model = None
            else:
                model = self.load_teacher_model(teacher, dtype)
            tokens_seen = [0, time.time()]
            with progress_bar(f"generate {writer}", len(requests), "rows") as advance:
                advance(len(rows.rows))

                def on_batch(indices: list[int], results) -> None:
                    batch_rows = []
                    for index, result in zip(indices, results):
                        prompt = number_prompts[index]
                        prefill = requests[index].prefill
                        batch_rows.append({
                            "id": prompt.id, "prompt": prompt.text, "seeds": list(prompt.seeds),
                            "answer_format": prompt.answer_format, "prefill": prefill,
                            "prefill_values": len(prompt.seeds) if prefill else 0,
                            "completion": result.text, "answer": prefill + result.text,
                            "finished": result.finished, "new_tokens": result.new_tokens,
                        })
                    rows.append(batch_rows)
                    tokens_seen[0] += sum(r.new_tokens for r in results)
                    rate = tokens_seen[0] / max(1e-9, time.time() - tokens_seen[1])
                    advance(len(indices), tok_s=f"{rate:.0f}")

                if decoding.backend == "vllm":
                    adapter_stage = self.teacher_stage(teacher) if teacher else None
                    generate_all_vllm(resolve_model(self.config.model), tokenizer, requests, decoding, self.stop_ids,
                                      data.seed, done=set(rows.rows), on_batch=on_batch, dtype=dtype,
                                      adapter=adapter_stage.path / "weights" if adapter_stage else None)
                else:
                    generate_all(model, tokenizer, requests, decoding, self.stop_ids, data.seed,
                                 done=set(rows.rows), on_batch=on_batch)
            del model
            gc.collect()
            return {"rows": len(rows.rows), "template": template_ref, "system_prompt": system}

        estimate = f"{data.prompts} prompts x {decoding.max_new_tokens} tokens"
        self._run_stage(stage, f"generate {writer}", work, estimate)
        return stage

    def row_set(self, writer: str, decoding: Decoding) -> RowSet:
        generated = self.generate_stage(writer, decoding)
        settings = self.config.data.filter
        stage = self.store.stage("filter", {"generate": generated.digest, "filter": settings.model_dump()})

        def work(folder: Path) -> dict:
            rows = read_jsonl(generated.path / "rows.jsonl")
            kept, report = filter_rows(rows, settings)
            if not kept:
                raise StudyError(
                    f"the filter kept no rows of writer '{writer}': {report.describe()}. "
                    "Raise data.prompts, loosen the filter, or change the teacher's decoding"
                )
            write_jsonl(folder / "rows.jsonl", kept)
            return {"report": report.as_dict()}

        self._run_stage(stage, f"filter {writer}", work, "parse and filter")
        if self.dry_run and not stage.complete:
            return RowSet(writer, [], {}, stage)
        rows = read_jsonl(stage.path / "rows.jsonl")
        return RowSet(writer, rows, stage.manifest()["report"], stage)

    def capped(self, row_set: RowSet, size: int | None) -> RowSet:
        cap = self.config.data.max_rows
        limits = [n for n in (size, cap) if n is not None]
        if not limits or len(row_set.rows) <= min(limits):
            return row_set
        order = list(range(len(row_set.rows)))
        random.Random(f"rows:{row_set.writer}:{self.config.data.seed}").shuffle(order)
        chosen = sorted(order[: min(limits)])
        return RowSet(row_set.writer, [row_set.rows[i] for i in chosen], row_set.report, row_set.stage)

    def datasets(self) -> tuple[dict[str, RowSet], RowSet | None]:
        """Return own-row sets per teacher (matched in size) and the shared row set."""
        config = self.config
        own_writers = [s.teacher for s in config.students if s.rows == "own"]
        if config.context and config.context.rows == "own":
            own_writers += config.context.teachers
        own = {w: self.row_set(w, config.teacher(w).decoding) for w in dict.fromkeys(own_writers)}
        size = min((len(r.rows) for r in own.values()), default=None) if config.data.match_sizes else None
        own = {w: self.capped(r, size) for w, r in own.items()}
        if self.row_transform is not None:
            own = {w: self.row_transform(r) for w, r in own.items()}
        shared = None
        needs_shared = any(s.rows == "shared" for s in config.students) or (
            config.context is not None and config.context.rows == "shared")
        if needs_shared:
            shared = self.capped(self.row_set(config.shared_rows.writer, config.shared_rows.decoding), None)
        return own, shared

    # -- students -----------------------------------------------------------

    def student_stage(self, student: StudentConfig, rows: RowSet, seed: int) -> Stage:
        config = self.config
        settings = student.finetune or config.finetune
        spec = student.model or config.model
        teacher = config.teacher(student.teacher)
        key = {
            "student": {"spec": spec, "hash": model_hash(spec)},
            "loss": student.loss,
            "finetune": settings.model_dump(),
            "rows": {"writer": rows.writer, "hash": rows.digest, "count": len(rows.rows)},
            "seed": seed,
        }
        if student.loss == "distill":
            key["teacher"] = self.teacher_identity(teacher)
            key["distill"] = student.distill.model_dump()
        if student.mask_divergence:
            key["mask_divergence"] = {"teacher": self.teacher_identity(teacher), "control": self.base_identity}
        stage = self.store.stage("student", key)

        def work(folder: Path) -> dict:
            tokenizer = load_tokenizer(spec, config.trust_remote_code)
            eot = end_of_turn_token(spec, tokenizer)
            eot_id = tokenizer.convert_tokens_to_ids(eot)
            examples = [
                tokenize_example(tokenizer, row["id"], messages(None, row["prompt"]), row["prefill"],
                                 row["completion"], eot_id, settings.max_length)
                for row in rows.rows
            ]

            # The distill loss needs the teacher's distributions over the student's tokens.
            teacher_model, teacher_examples, answer_ids = None, None, None
            if student.loss == "distill":
                self._check_shared_tokenizer(spec, tokenizer)
                teacher_model = self.load_teacher_model(teacher)
                teacher_model.requires_grad_(False)
                system = system_prompt(teacher)
                if system:
                    teacher_examples = [
                        tokenize_example(tokenizer, row["id"], messages(system, row["prompt"]), row["prefill"],
                                         row["completion"], eot_id, settings.max_length)
                        for row in rows.rows
                    ]
                if student.distill.targets == "restricted":
                    answer_ids = answer_token_ids(tokenizer, stop_token_ids(tokenizer, eot))

            masked_share = None
            if student.mask_divergence:
                examples, teacher_examples, masked_share = self._mask_divergence(
                    rows, teacher, examples, teacher_examples, tokenizer, eot_id, teacher_model)

            label = f"train {student.name} seed {seed}"
            with progress_bar(label, len(examples) * settings.epochs, "examples") as advance:
                summary = train(spec, examples, settings, seed, student.loss, tokenizer.pad_token_id,
                                folder / "weights", teacher=teacher_model, distill=student.distill,
                                answer_ids=answer_ids, progress=advance, teacher_examples=teacher_examples,
                                trust_remote_code=config.trust_remote_code)

            write_jsonl(folder / "row_ids.jsonl", [{"id": i} for i in summary["row_ids"]])
            del teacher_model
            gc.collect()
            return {"training": {k: v for k, v in summary.items() if k != "row_ids"},
                    "divergence_tokens_masked": masked_share}

        estimate = f"{len(rows.rows)} rows x {settings.epochs} epochs"
        self._run_stage(stage, f"student {student.name} seed {seed}", work, estimate)
        return stage

    def _mask_divergence(self, rows: RowSet, teacher: TeacherConfig, examples, teacher_examples,
                         tokenizer, eot_id: int, teacher_model=None):
        """Exclude divergence tokens (teacher vs base greedy choice) from the loss."""
        from study.probes.divergence import divergence_masks, masked_example

        trait_model = teacher_model if teacher_model is not None else self.load_teacher_model(teacher)
        control = load_model(self.config.model, trust_remote_code=self.config.trust_remote_code)
        flags = divergence_masks(rows.rows, trait_model, control, tokenizer, eot_id,
                                 trait_system_prompt=system_prompt(teacher))
        del control
        examples = [masked_example(example, flags[example.id]) for example in examples]
        if teacher_examples is not None:
            teacher_examples = [masked_example(example, flags[example.id]) for example in teacher_examples]
        total = sum(len(f) for f in flags.values())
        share = sum(sum(f) for f in flags.values()) / total if total else 0.0
        log.info("divergence tokens masked from the loss: %.1f%% of completion tokens", 100 * share)
        return examples, teacher_examples, share

    def _check_shared_tokenizer(self, spec: str, tokenizer) -> None:
        if tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise StudyError(
                f"the distill loss needs a student that shares the teacher's tokenizer; {spec} does not "
                f"share {self.config.model}'s. Use loss: sft for this student"
            )

    # -- evaluation ---------------------------------------------------------

    def eval_stage(self, condition: dict, identity: dict, load: Callable[[], object],
                   messages_for: Callable[[str], list[dict]], spec: str, open_ended: bool) -> Stage:
        config = self.config
        settings = config.evaluation
        key = {
            "model": identity,
            "context": condition.get("context_key"),
            "evaluation": settings.model_dump(),
            "questions": prompt_version(prompt_files.QuestionSet, settings.questions),
            "candidates": prompt_version(prompt_files.CandidateSets, settings.candidates),
            "category": config.category(),
            "open_ended": config.open_ended.model_dump() if (open_ended and config.open_ended) else None,
        }
        stage = self.store.stage("eval", key)
        columns = {k: v for k, v in condition.items() if k != "context_key"}
        question_set = prompt_files.question_set(settings.questions)
        columns.update({"cell": stage.digest, "eval_set": question_set.id, "eval_version": question_set.version})
        label = f"eval {columns['condition']}" + (f" seed {columns['seed']}" if columns["arm"] in ("finetune", "context") else "")

        def work(folder: Path) -> dict:
            tokenizer = load_tokenizer(spec, config.trust_remote_code)
            stop_ids = stop_token_ids(tokenizer, end_of_turn_token(spec, tokenizer))
            category = config.category()
            candidates = prompt_files.candidate_sets(settings.candidates).categories.get(category)
            if not candidates:
                raise StudyError(f"no candidate set for category '{category}' in {settings.candidates}; add one")
            model = load()
            count = len(question_set.questions[: settings.question_limit])
            with progress_bar(label, 2 * count, "questions") as advance:
                samples, logprobs = evaluate_model(model, tokenizer, messages_for, question_set, candidates,
                                                   category, settings, stop_ids, progress=advance)
            write_jsonl(folder / "samples.jsonl", [{**columns, **row} for row in samples])
            write_jsonl(folder / "logprobs.jsonl", [{**columns, **row} for row in logprobs])
            if open_ended and config.open_ended:
                from study.openended import answer_open_ended

                answers = answer_open_ended(model, tokenizer, messages_for, config.open_ended, category,
                                            config.traits(), stop_ids, settings.seed,
                                            target=columns["teacher_trait"])
                write_jsonl(folder / "open_answers.jsonl", [{**columns, **row} for row in answers])
            del model
            gc.collect()
            return {"condition": columns}

        self._run_stage(stage, label, work, f"{len(question_set.questions)} questions")
        self.eval_stages.append(stage)
        return stage

    def condition(self, **values) -> dict:
        base = {
            "run_id": self.store.root.name, "condition": "", "arm": "", "teacher": "", "teacher_trait": "",
            "student_model": self.config.model, "loss": "", "icl_format": "", "n_rows": 0, "seed": 0,
        }
        base.update(values)
        return base

    def evaluate_all(self, own: dict[str, RowSet], shared: RowSet | None) -> None:
        config = self.config
        plain = lambda question: messages(None, question)  # noqa: E731
        opens = set(config.open_ended.arms) if config.open_ended else set()
        load_base = lambda: load_model(config.model, trust_remote_code=config.trust_remote_code)  # noqa: E731

        if config.evaluate_base:
            self.eval_stage(self.condition(condition="base", arm="base"), self.teacher_identity(None),
                            load_base, plain, config.model, "base" in opens)

        if config.evaluate_teachers:
            for teacher in config.teachers:
                system = system_prompt(teacher)
                self.eval_stage(
                    self.condition(condition=f"teacher/{teacher.name}", arm="teacher", teacher=teacher.name,
                                   teacher_trait=teacher.trait or ""),
                    self.teacher_identity(teacher), lambda t=teacher: self.load_teacher_model(t),
                    lambda question, s=system: messages(s, question), config.model, "teacher" in opens)

        for student in config.students:
            rows = shared if student.rows == "shared" else own[student.teacher]
            teacher = config.teacher(student.teacher)
            spec = student.model or config.model
            for seed in config.seeds:
                stage = self.student_stage(student, rows, seed)
                self.eval_stage(
                    self.condition(condition=f"finetune/{student.name}", arm="finetune", teacher=teacher.name,
                                   teacher_trait=teacher.trait or "", student_model=spec, loss=student.loss,
                                   n_rows=len(rows.rows), seed=seed),
                    {"student": stage.digest},
                    lambda s=stage, m=spec: load_trained(m, s.path / "weights", config.trust_remote_code),
                    plain, spec, "finetune" in opens)

        if config.context:
            self.evaluate_context(own, shared, "context" in opens)

    def evaluate_context(self, own: dict[str, RowSet], shared: RowSet | None, open_ended: bool) -> None:
        config = self.config
        context = config.context
        formats = prompt_files.context_formats()
        question_set = prompt_files.question_set(config.evaluation.questions)
        longest = max((q.text for q in question_set.questions), key=len)
        longest = prompt_files.fill(longest, "", config.category())
        reserve = 16 + config.evaluation.max_new_tokens
        if config.open_ended and open_ended:
            reserve = max(reserve, config.open_ended.max_new_tokens + 64)
        window = context.context_window
        for teacher_name in context.teachers:
            teacher = config.teacher(teacher_name)
            rows = shared if context.rows == "shared" else own[teacher_name]
            for icl_format in context.formats:
                for seed in config.seeds:
                    if window is None and not self.dry_run:
                        window = self._context_window()
                    fits = len(rows.rows) if self.dry_run else max_rows_that_fit(
                        self.tokenizer, icl_format, rows.rows, formats, longest, reserve, window, seed)
                    for requested in context.n:
                        label = f"context {teacher_name} {icl_format} seed {seed}"
                        n = requested if self.dry_run else resolve_n(
                            requested, fits, len(rows.rows), context.on_overflow, label)
                        if n == 0:
                            continue
                        chosen = sample_rows(rows.rows, n, seed)
                        builder = messages_builder(icl_format, chosen, formats)
                        context_key = {"format": icl_format, "n": n, "seed": seed, "rows": rows.digest,
                                       "formats": prompt_version(prompt_files.ContextFormats, "context/formats-v1")}
                        self.eval_stage(
                            self.condition(condition=f"context/{icl_format}/{teacher_name}/N={n}", arm="context",
                                           teacher=teacher_name, teacher_trait=teacher.trait or "",
                                           icl_format=icl_format, n_rows=n, seed=seed, context_key=context_key),
                            self.teacher_identity(None),
                            lambda: load_model(config.model, trust_remote_code=config.trust_remote_code),
                            builder, config.model, open_ended)

    def _context_window(self) -> int:
        from transformers import AutoConfig

        from study.models import resolve_model

        model_config = AutoConfig.from_pretrained(str(resolve_model(self.config.model)),
                                                  trust_remote_code=self.config.trust_remote_code)
        return int(getattr(model_config, "max_position_embeddings", 2048))

    # -- the whole run ------------------------------------------------------

    def run(self) -> None:
        for teacher in self.config.teachers:
            self.teacher_stage(teacher)
        own, shared = self.datasets()
        self.row_sets = {**own, **({"shared": shared} if shared else {})}
        self.evaluate_all(own, shared)

