"""PyTorch's benchmark process (CPU, eager mode, ``torch.optim.Adam``).

The models are the course's: ``Conv2d(1, 32, 3) -> ReLU -> MaxPool2d(2) -> Conv2d(32, 64, 3) -> ReLU
-> MaxPool2d(2) -> Flatten -> Linear(1600, 128) -> ReLU -> Dropout(0.5) -> Linear(128, 10)`` with
Glorot-uniform weights and zero biases, and ``LSTM(8, 64) -> Linear(64, 1)`` on the last step;
``gru_train``: ``GRU(8, 64) -> Linear(64, 1)`` (PyTorch's GRU is the reset-after form, jaxdl's
default, with the same parameter count); ``bilstm_train``: ``LSTM(8, 64, bidirectional=True)``,
the final states of both directions (``h_n``) concatenated into ``Linear(128, 1)``.
PyTorch convolutions take NCHW, so the shared NHWC images are transposed once, before timing.
Intra-op threads: the harness's ``threads`` (both cores).

Run by :mod:`experiments.benchmarks.run`.
"""

from __future__ import annotations

from typing import Any

from experiments.benchmarks._harness import main


def versions() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "mkldnn": str(torch.backends.mkldnn.is_available())}


def build(workload: str, cfg: dict[str, Any], data: dict[str, Any]):
    import torch
    from torch import nn

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])

    def cnn() -> nn.Module:
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),  # NCHW flatten: a permutation of NHWC's, the same layer up to weight order
            nn.Linear(1600, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, 10),
        )
        for m in model:
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        return model

    class LSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(cfg["features"], cfg["hidden"], batch_first=True)
            self.head = nn.Linear(cfg["hidden"], 1)

        def forward(self, x):
            y, _ = self.rnn(x)  # (B, T, H)
            return self.head(y[:, -1])

    class GRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(cfg["features"], cfg["hidden"], batch_first=True)
            self.head = nn.Linear(cfg["hidden"], 1)

        def forward(self, x):
            _, h_n = self.rnn(x)  # (1, B, H)
            return self.head(h_n[0])

    class BiLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(cfg["features"], cfg["hidden"], batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * cfg["hidden"], 1)

        def forward(self, x):
            _, (h_n, _) = self.rnn(x)  # (2, B, H): forward after x[T-1], backward after x[0]
            return self.head(torch.cat([h_n[0], h_n[1]], dim=-1))

    if workload in ("cnn_train", "cnn_infer"):
        x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).contiguous()  # (N, 1, 28, 28)
        y = torch.from_numpy(data["y"]).long()
        model, loss_fn = cnn(), nn.CrossEntropyLoss()
    elif workload in ("lstm_train", "gru_train", "bilstm_train"):
        x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
        model = {"lstm_train": LSTM, "gru_train": GRU, "bilstm_train": BiLSTM}[workload]()
        loss_fn = nn.MSELoss()
    else:
        raise NotImplementedError(f"{workload} is measured for jaxdl and Keras only")

    if workload == "cnn_infer":
        model.eval()

        def infer():
            with torch.inference_mode():
                return model(x)

        return infer, lambda out: None

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step, lambda loss: loss.item()


if __name__ == "__main__":
    main("torch", build, versions)
