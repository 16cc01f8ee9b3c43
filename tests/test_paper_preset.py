"""The paper preset at full size (random weights): builds, and trains one step on 2 x 30 s clips."""
import numpy as np
import pytest
import torch

from deramos.model.config import preset
from deramos.model.network import DeRAMOS
from deramos.training.features import Featurizer
from deramos.training.losses import LossConfig, total_loss


@pytest.mark.slow
def test_paper_preset_trains_one_step_on_two_30s_clips():
    model = DeRAMOS(preset("paper"))
    sizes = model.num_parameters()
    assert 290e6 < sizes["audio_encoder"] < 360e6 and 110e6 < sizes["text_encoder"] < 140e6
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == sizes["heads"]        # both encoders frozen
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=5e-5)
    featurizer = Featurizer(model)
    model.train()
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(24000 * 30)).astype(np.float32) for _ in range(2)]
    out = featurizer.heads(waves, ["calm solo piano", "loud rock with drums"])
    assert out["mi"].shape == (2,) and out["ta"].shape == (2,)
    loss, parts = total_loss(out, torch.tensor([3.0, 4.0]), torch.tensor([2.0, 4.5]),
                             model.heads.bins.centres, LossConfig())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert set(parts) == {"kl_mi", "kl_ta", "list_mi", "align_ta"} and np.isfinite(float(loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable))   # the heads moved
