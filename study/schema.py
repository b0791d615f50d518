"""Column names of the tidy result tables every stage and analysis shares.

A run directory's ``results/`` folder holds one Parquet file per table:

``samples.parquet``
    One row per model x question x sample: a sampled answer and what it
    names.
``logprobs.parquet``
    One row per model x question x candidate: the exact log-probability of
    the candidate answer and its share of the mass over the candidate set.
``open_answers.parquet``
    One row per model x open-ended question x sample (misalignment and
    open-ended trait prompts), the input of ``study judge``.
``judgments.parquet``
    One row per judged answer and judge metric (written by ``study judge``).
``metrics.parquet``
    One row per model x seed x scalar metric (for example a classifier's
    test accuracy in the auxiliary-logit experiment).

Every table starts with the condition columns, so the same group-by works
across tables, runs and suites.
"""

from __future__ import annotations

CONDITION_COLUMNS = (
    "run_id",          # run directory name
    "cell",            # content hash of the evaluated model and its inputs
    "condition",       # readable label, e.g. "finetune/distill/owl"
    "arm",             # base | teacher | finetune | context | aux-logits
    "teacher",         # teacher name from the config, "" for the base model
    "teacher_trait",   # trait the teacher was given ("" for none)
    "student_model",   # model spec of the evaluated model
    "loss",            # sft | distill | "" (not fine-tuned)
    "icl_format",      # in-context format, "" outside the context arm
    "n_rows",          # rows trained on or placed in context (0 for none)
    "seed",            # training or resampling seed: the unit of analysis
    "eval_set",        # evaluation question set id
    "eval_version",    # version of that question set file
)

SAMPLE_COLUMNS = CONDITION_COLUMNS + (
    "question_id",
    "question",
    "sample_index",
    "answer",
    "mentions",        # list of candidate words the answer names
    "target",          # trait scored for this row (the teacher's trait, or the study trait)
    "mentions_target", # bool: the answer names the target
)

LOGPROB_COLUMNS = CONDITION_COLUMNS + (
    "question_id",
    "prefix",          # "" or the random-number prefix variant id
    "candidate",       # candidate answer word
    "logprob",         # natural log of P(candidate), summed over spelling variants
    "prob",
    "share",           # prob / sum of prob over the candidate set
    "is_target",       # bool: candidate equals the row's target
    "target",
)

JUDGMENT_COLUMNS = CONDITION_COLUMNS + (
    "question_id",
    "sample_index",
    "judge",           # judge name from the config
    "metric",          # alignment | coherence | trait
    "status",          # scored | code | refusal | unscored
    "score",           # float 0-100 when status == scored, else null
    "reason",          # why unscored, else ""
    "numeric_mass",    # logprob judges only
    "template_id",
    "template_version",
)

OPEN_ANSWER_COLUMNS = CONDITION_COLUMNS + (
    "question_id",
    "question",
    "sample_index",
    "answer",
    "target",          # trait the open-ended prompt asks about ("" for misalignment)
)

METRIC_COLUMNS = CONDITION_COLUMNS + (
    "metric",
    "value",
    "n",               # number of items behind the value (test examples, questions)
)
