"""The training engine: a plain model becomes a DeepSpeed run that trains, evaluates, checkpoints and resumes.

    config.py             the config sections: optimizer, schedule, stages, evaluation, DeepSpeed
    preflight.py          every check of the user's inputs that can be made before DeepSpeed starts
    distributed.py        process-group setup and the few collectives the engine needs
    wrap.py               the one place an ``nn.Module`` becomes a DeepSpeed engine, in a documented order
    optim.py              optimizer and learning-rate schedule from the model's parameter groups
    stages.py             staged training: each stage's epochs, frozen parts, learning rate and loss settings
    step.py               train_step: device pipe (copy, augmentation, casting), forward, loss, finite check, step
    losses.py             every loss term under one set of rules: classification, auxiliary, distillation, contrastive
    loop.py               train(): the loop that reads top to bottom, evaluation and prediction
    checkpoint.py         checkpoints and exact resume (training state, loader position, RNG, buffers)
    metrics.py            classification metrics from gathered probabilities
    retrieval.py          evaluation of a dual encoder: retrieval and zero-shot classification
    retrieval_metrics.py  recall@K and ranks from embeddings, in blocks
    distill.py            the teacher: a finished run's class probabilities as soft targets
    run_dir.py            the run folder: resolved config, metrics.jsonl, summary.json
    run_stats.py          what a run cost and scored, for summary.json
    monitor.py            TensorBoard, Weights & Biases and the curves PNG (rank 0)
    console.py            what a run prints: one line per epoch and a summary

``engine/train.py`` is the entry point; it calls ``loop.train(cfg)``.
"""
