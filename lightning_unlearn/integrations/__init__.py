"""The libraries we build on: Hugging Face models (loading, checking, devices, the training mode;
:mod:`~lightning_unlearn.integrations.huggingface`, :mod:`~lightning_unlearn.integrations.training_mode`) and peft
adapters (:mod:`~lightning_unlearn.integrations.peft`)."""
