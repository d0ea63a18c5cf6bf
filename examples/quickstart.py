"""The quick start of the original DREAM-NN description: DREAM works like nn.LSTM.

Run: python examples/quickstart.py
"""

import torch

from dreamode import DREAM


def main() -> tuple[torch.Size, torch.Size]:
    # Works like nn.LSTM
    model = DREAM(
        input_dim=64,
        hidden_dim=128,
        rank=8,
    )
    x = torch.randn(32, 50, 64)
    output, state = model(x)
    print(f"output {tuple(output.shape)}, final h {tuple(state.h.shape)}, fast weights U {tuple(state.U.shape)}")

    # The same cell through another solver, on irregular per-sample times:
    # each sample its own clock: gaps between 0.05 and 0.15 time units
    times = torch.cumsum(0.05 + 0.1 * torch.rand(32, 50), dim=1)
    rk4 = DREAM(64, 128, rank=8, solver="rk4")
    rk4.load_state_dict(model.state_dict())
    out_rk4, _ = rk4(x, times=times)
    out_euler, _ = model(x, times=times)
    gap = (out_rk4 - out_euler).abs().max()
    print(f"irregular times: max |h_rk4 - h_euler| = {gap:.3e} (the discretisation gap of the Euler rule)")
    return output.shape, state.h.shape


if __name__ == "__main__":
    main()
