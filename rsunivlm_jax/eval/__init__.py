"""Evaluation building blocks: metrics, caption metrics, scoring against records, pictures, reports.

* `rsunivlm_jax.eval.metrics`  - pure numpy metrics (accuracy, VQA, grounding, masks, change detection);
* `rsunivlm_jax.eval.captions` - BLEU / METEOR / ROUGE-L / CIDEr (official through pycocoevalcap, or
  Java-free mode);
* `rsunivlm_jax.eval.scoring`  - `score_task` / `trivial_baselines` over instruction records;
* `rsunivlm_jax.eval.evaluate` - `evaluate(model, records, root, task, EvalOptions(...))`: batched
  generation, scores and the written files (predictions, examples, report, metrics.json last);
* `rsunivlm_jax.eval.render`   - answer pictures (one drawing per task), boxes, masks, galleries, curves;
* `rsunivlm_jax.eval.report`   - metrics.json and the markdown report.

Submodules are imported on demand (pycocoevalcap only for official caption metrics).
"""
