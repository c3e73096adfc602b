"""Training runs.

run_config (the typed YAML run configuration: `RunTrainingArguments`, `ModelSection`, `EvaluationConfig`;
the data section is `data.corpora.DataConfig`), model_building (tokenizer and model of a run), experiment
(a run: validate, build, train, test, record), run_folder (output folder checks, lock, resume policy),
run_records (the files written beside a model), ensembles (`ccr ensemble`), trainer (MatchingTrainer),
tracking, text_encoders, ablation (`ccr ablate` grids).
"""
