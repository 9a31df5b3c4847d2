"""The model layer: what a transformer is and how it runs, whatever the backend.

The registry and loaders (:mod:`~pinfer.model.registry`, :func:`~pinfer.model.registry.load_model`)
turn HF checkpoints (LLaMA / GPT-2 families) into a :class:`~pinfer.model.config.ModelConfig` and
canonical weights (:mod:`~pinfer.model.weights`); the decoder forward (:mod:`~pinfer.model.decoder`)
is written once over :mod:`~pinfer.model.tensor_ops`, with a plaintext backend
(:mod:`~pinfer.model.plain_ops`), the generation loop (:mod:`~pinfer.model.generation`) and the
public norm shifts (:mod:`~pinfer.model.norm_plan`). Nothing here knows about shares or parties.
"""
