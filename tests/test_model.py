import pytest
import torch

from lossdiag.models.shallownet import ShallowNet


@pytest.mark.parametrize(
    ("width", "height", "depth", "classes"), [(8, 8, 1, 10), (32, 32, 3, 3), (20, 12, 3, 5)]
)
def test_shallownet_shapes(width: int, height: int, depth: int, classes: int) -> None:
    net = ShallowNet(width=width, height=height, depth=depth, classes=classes)
    out = net(torch.randn(4, depth, height, width))
    assert out.shape == (4, classes)
    assert net.conv1.in_channels == depth and net.conv1.out_channels == 32
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.padding == (1, 1)
    assert net.fc1.in_features == width * height * 32 and net.fc1.out_features == classes


def test_shallownet_is_conv_relu_linear() -> None:
    net = ShallowNet(width=4, height=4, depth=1, classes=2)
    x = torch.randn(3, 1, 4, 4)
    manual = net.fc1(torch.relu(net.conv1(x)).reshape(3, -1))
    assert torch.allclose(net(x), manual)
