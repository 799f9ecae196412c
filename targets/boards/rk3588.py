"""A real board, as an example to copy: a Rockchip RK3588 (4x Cortex-A76 + 4x Cortex-A55)
running 64-bit Linux. On the board: ``pip install apache-tvm==0.27.0.post1
apache-tvm-ffi==0.1.14.post1 tornado psutil cloudpickle``, then
``python -m tvm.exec.rpc_server --tracker HOST:9190 --key rk3588``."""

from tvm_intq.targets.board import BoardSpec

BOARD = BoardSpec(
    name="rk3588",
    target="aarch64",
    key="rk3588",
    description="Rockchip RK3588 (Cortex-A76 + A55), 64-bit Linux; runs TVM's own RPC server",
    setup=(
        "pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 tornado psutil "
        "cloudpickle",
    ),
)
