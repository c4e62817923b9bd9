"""The evaluations an objective declares beyond held-out losses (``Task.evaluations``), by kind,
and the zero-shot scores of an instruction mixture's held-out clusters.

A Task names an evaluation kind and its settings (``ptobj.objectives.task.Evaluation``);
this module maps each kind to the code that runs it on a trained session. FIM
declares ``infilling`` (:mod:`ptobj.recipes.evaluation.infill`). Adding a kind is one function
here; no objective is named.
"""

from __future__ import annotations

from typing import Callable

from ptobj.recipes.engine.trainer import Report


def infilling(sess, name: str, params: dict) -> Report | None:
    """Infilling of held-out code (:mod:`ptobj.recipes.evaluation.infill`) with the session's model."""
    from ptobj.recipes.evaluation.infill import OurModel, build_tasks, held_out_texts, render_example, run_infill, summary_table

    icfg = sess.cfg.eval.infill
    if not icfg.enabled:
        return None
    modes = icfg.modes or tuple(params.get("modes", ("psm",)))
    split = sess.data.prepared.valid or sess.data.prepared.train
    texts = held_out_texts(split, sess.tokenizer)
    tasks = build_tasks(texts, sess.tokenizer, kinds=icfg.kinds, per_kind=icfg.tasks_per_kind,
                        max_middle_tokens=icfg.middle_tokens, seed=icfg.seed)
    if not tasks:
        return Report(name, text="[infill] the held-out documents gave no infilling tasks")
    autocast = sess.autocast if sess.autocast() is not None else None
    result = run_infill(OurModel(sess.model, sess.info.device, autocast), sess.tokenizer, tasks, icfg, modes=modes,
                        spm_variant=int(params.get("spm_variant", 2)), seq_length=sess.cfg.data.seq_length,
                        allowed=sess.data.vocab_size)
    n = icfg.samples
    lines = [f"infilling: {len(tasks)} tasks from held-out files, prompted {'/'.join(m.upper() for m in modes)}; "
             f"exact match of the middle (greedy, best-of-{n}, EOT-aware best-of-{n} at T={icfg.temperature}), "
             "infilled files that parse, share of samples that emit EOT, loss per token of the reference middle",
             summary_table(result.metrics, modes, icfg.kinds)]
    example = result.example()
    lines.append(render_example(example, n) if example is not None else
                 f"no infilled example: none of the {len(tasks) * len(modes) * n} samples emitted EOT "
                 "(a model this small and this briefly trained rarely closes a middle; train longer)")
    return Report(name, result.metrics, "\n".join(lines), result)


KINDS: dict[str, Callable] = {"infilling": infilling}


def run_declared(sess) -> list[Report]:
    """Every evaluation the session's objective declares (``cfg.plan.evaluations``), in order, then
    the one its data declares: an instruction mixture's held-out clusters, scored zero-shot
    (:mod:`ptobj.recipes.evaluation.zero_shot`)."""
    reports = []
    for name, ev in sess.cfg.plan.evaluations.items():
        if ev.kind not in KINDS:
            raise ValueError(f"objective evaluation {name!r}: no implementation of kind {ev.kind!r}; "
                             f"known: {sorted(KINDS)}")
        report = KINDS[ev.kind](sess, name, dict(ev.params))
        if report is not None:
            reports.append(report)
    mixture = sess.cfg.data.records.mixture
    if mixture is not None and mixture.held_out:
        from ptobj.recipes.evaluation.zero_shot import zero_shot

        reports.append(zero_shot(sess))
    return reports
