"""A user's own LightningModule, as the own-trainer guide writes it (a test checks that the guide holds this class
verbatim): gradient ascent whose per-record loss is multiplied by the weights SelectiveAscent puts in the batch."""

import lightning as L
import torch

from lightning_unlearn.functional.memorization import sequence_nll


class WeightedAscent(L.LightningModule):
    def __init__(self, model, learning_rate=5e-5):
        super().__init__()
        self.model = model  # a Hugging Face causal LM: all the callbacks need
        self.learning_rate = learning_rate

    def training_step(self, batch, batch_idx):
        forget = batch["forget"]
        logits = self.model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        nll = sequence_nll(logits, forget["input_ids"], forget["attention_mask"])  # Tensor[B]: each record's NLL
        weight = forget.get("weight", torch.ones_like(nll))  # Tensor[B]: SelectiveAscent's, 0 or 1 per record
        return -(weight * nll).sum() / len(nll)  # divided by the records, so N processes average to one batch

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)
