"""The configs people already have, read into `vramplan.spec.resolve_train`'s keyword arguments and a model.

One reader per format, each returning a `FileSettings`: LLaMA-Factory YAML (hparams/*_args.py, LLaMA-Factory
commit ff6d4d1) and its v1 format (examples/v1), axolotl YAML (utils/schemas/*.py, axolotl commit 067b021), a
transformers 5.24 `TrainingArguments.to_json_string()` dump (TRL's SFTConfig adds max_length, packing), a
PEFT 0.21.2 `adapter_config.json`, a model's `config.json` (its `quantization_config`), an accelerate config
YAML. A file's DeepSpeed / FSDP settings go to `FileSettings.parallel` (sources/configs/deepspeed.py).
`vramplan.sources.inputs` layers them under the flags. Unknown keys are ignored; known keys whose values we do
not model become `Unmodeled`.

`formats.read_config` reads a --from file with the reader of its format. The package imports nothing itself,
so a command without --from files loads only what it reads (the model config.json's `huggingface` reader).
"""
