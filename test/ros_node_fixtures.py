"""Fixtures and helpers of the node tests over real DDS (test_ros_node*.py).

The node runs the small ``tinyvit_s256`` model (seeded random weights, exported to ONNX) in a
process of its own, as ``segfast_node --ros-args ...``; the client is a participant in the
test process, on the same isolated domain. A test module that imports the ``node`` and
``client`` fixtures gets one node for all its tests (module scope), in file order.
"""

# ruff: noqa: E402 (imports after the skip when ROS 2 is absent)
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point
from lifecycle_msgs.srv import GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from segfast_ros.masks import rle_to_mask
from segfast_ros.msg import InstanceArray
from segfast_ros.ros.harness import Client, NodeProcess, free_domain_id, image_msg
from segfast_ros.ros.qos import SERVICE_QOS
from segfast_ros.runtime import Predictor
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.srv import Segment

REPO = Path(__file__).resolve().parents[1]
NS = "/segfast_test"
NODE = f"{NS}/segfast"
GRID_SIDE = 4


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir: Path) -> Path:
    return tiny_onnx_dir


@pytest.fixture(scope="module")
def domain_id() -> int:
    return free_domain_id()


def node_args(ns: str, params: dict[str, Any], image: str = "") -> list[str]:
    """``--ros-args`` of a node in namespace ``ns`` with ``params``, ``image`` remapped."""
    remap = ["-r", f"image:={image}"] if image else []
    values = [
        ["-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}"] for k, v in params.items()
    ]
    return ["-r", f"__ns:={ns}", *remap, *(arg for pair in values for arg in pair)]


def model_params(model_dir: Path, **params: Any) -> dict[str, Any]:
    """Parameters of a node on the test model (fp32), with ``params`` (dotted names as keys)."""
    return {"model_dir": str(model_dir), "precision": "fp32", **params}


def demo_grid_params(**params: Any) -> dict[str, Any]:
    """A node on the shipped demo model: SegEvery's grid at 5 Hz with 8 points a side and the
    demo presets (segevery/presets.py; SAM's own filters keep almost no mask of it),
    diagnostics every 0.5 s, and ``params`` on top."""
    from segfast_ros.segevery.presets import DEMO_SEGEVERY_PARAMS

    grid = {f"segevery.grid.{k}": v for k, v in DEMO_SEGEVERY_PARAMS["grid"].items()}
    return model_params(
        "demo",
        **{
            "segevery.rate": 5.0,
            "segevery.grid.points_per_side": 8,
            **grid,
            "diagnostics_period": 0.5,
            **params,
        },
    )


def run_node(args: list[str], domain_id: int, log_path: Path) -> Iterator[NodeProcess]:
    """A fixture's body: the node process, then its clean exit (code 0) once the tests ran."""
    proc = NodeProcess(args, domain_id, log_path)
    yield proc
    code = proc.stop()
    assert code == 0, f"node exited with {code}:\n{proc.log()}"


@pytest.fixture(scope="module")
def node(model_dir: Path, domain_id: int, tmp_path_factory: pytest.TempPathFactory):
    params = model_params(
        model_dir,
        **{
            "segevery.rate": 5.0,
            "segevery.grid.points_per_side": GRID_SIDE,
            "segevery.grid.pred_iou_thresh": 0.0,
            "segevery.grid.stability_score_thresh": 0.0,
            "diagnostics_period": 0.5,
            "use_compressed": True,
        },
    )
    args = node_args(NS, params, image="camera/image")
    yield from run_node(args, domain_id, tmp_path_factory.mktemp("node") / "node.log")


def participant(domain_id: int) -> Client:
    """A client that keeps every /diagnostics message it sees (in ``diagnostics``)."""
    c = Client(domain_id)
    c.diagnostics: list[Any] = []
    c.node.create_subscription(
        DiagnosticArray, "/diagnostics", c.diagnostics.append, qos_profile_sensor_data
    )
    return c


def wait_until_serving(c: Client, node: NodeProcess, segment: Any, image_pub: Any) -> None:
    """Spin until ``node`` offers ``segment`` and takes ``image_pub``'s frames; fail with its
    log if it exits first."""
    c.spin_until(
        lambda: segment.service_is_ready() or not node.alive(),
        60,
        f"the node's ~/segment service; node log:\n{node.log()}",
    )
    assert node.alive(), f"the node exited:\n{node.log()}"
    c.spin_until(lambda: image_pub.get_subscription_count() > 0, 30, "the image subscriber")


@pytest.fixture(scope="module")
def client(node: NodeProcess, domain_id: int):
    """A client of the module's node, once its ~/segment and image subscription are up."""
    c = participant(domain_id)
    c.image_pub = c.node.create_publisher(Image, f"{NS}/camera/image", 2)
    c.compressed_pub = c.node.create_publisher(CompressedImage, f"{NS}/camera/image/compressed", 2)
    c.segment = c.node.create_client(Segment, f"{NODE}/segment")
    c.set_params = c.node.create_client(SetParameters, f"{NODE}/set_parameters")
    c.get_state = c.node.create_client(GetState, f"{NODE}/get_state")
    c.instances: list[Any] = []
    c.labels: list[Any] = []
    c.node.create_subscription(InstanceArray, f"{NODE}/instances", c.instances.append, 10)
    c.node.create_subscription(Image, f"{NODE}/instances/label", c.labels.append, 10)
    try:
        wait_until_serving(c, node, c.segment, c.image_pub)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Predictor:
    """The library's Predictor on the same ONNX files, in this process."""
    return Predictor(OnnxRuntimeBackend.from_dir(model_dir, "fp32"))


def request(stamp_ns: int = 0, **fields: Any) -> Segment.Request:
    """A ``Segment`` request for the frame stamped ``stamp_ns`` (0: the latest)."""
    req = Segment.Request()
    req.stamp.sec, req.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    points = fields.pop("points", [])
    req.points = [Point(x=float(x), y=float(y)) for x, y in points]
    for key, value in fields.items():
        setattr(req, key, value)
    return req


def publish_and_wait(
    client: Client, rgb: np.ndarray, stamp_ns: int, segment: Any = None, pub: Any = None, **kw: Any
) -> None:
    """Publish a frame and wait until ~/segment answers for its stamp (encoded and cached).

    ``segment`` and ``pub`` default to the module node's service client and image publisher.
    """
    segment = segment or client.segment
    pub = pub or client.image_pub
    pub.publish(image_msg(rgb, stamp_ns, **kw))
    deadline = time.monotonic() + 30
    probe = request(stamp_ns, points=[(1, 1)], labels=[1])
    while True:
        resp = client.call(segment, probe)
        if resp.success:
            return
        assert "no cached frame" in resp.message, resp.message
        if time.monotonic() > deadline:
            raise AssertionError(f"frame {stamp_ns} never became available: {resp.message}")
        pub.publish(image_msg(rgb, stamp_ns, **kw))  # best effort: resend


def masks_of(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """Decoded masks and scores of one SegmentResult."""
    masks = [
        rle_to_mask({"size": [m.mask_height, m.mask_width], "counts": list(m.rle_counts)})
        for m in result.masks
    ]
    return np.stack(masks), np.array([m.score for m in result.masks], dtype=np.float32)


def by_score(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks and scores, best score first."""
    order = np.argsort(-scores, kind="stable")
    return masks[order], scores[order]


def set_param(client: Client, name: str, value: Any) -> Any:
    """Set one parameter of the module's node; the SetParametersResult."""
    kinds = {
        bool: (ParameterType.PARAMETER_BOOL, "bool_value"),
        int: (ParameterType.PARAMETER_INTEGER, "integer_value"),
        float: (ParameterType.PARAMETER_DOUBLE, "double_value"),
        str: (ParameterType.PARAMETER_STRING, "string_value"),
    }
    kind, field = kinds[type(value)]
    pv = ParameterValue(type=kind)
    setattr(pv, field, value)
    req = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
    return client.call(client.set_params, req).results[0]


def call_all(client: Client, segment: Any, requests: list[Any], timeout: float) -> list[Any]:
    """Send every request at once, then spin until each has its response (or time out)."""
    futures = [segment.call_async(req) for req in requests]
    client.spin_until(
        lambda: all(f.done() for f in futures),
        timeout,
        f"all {len(futures)} responses ({sum(f.done() for f in futures)} came)",
    )
    return [f.result() for f in futures]


def deep_client(client: Client, service: str) -> Any:
    """A ~/segment client that keeps every response, as a caller with many calls in flight
    must: rclpy's default client keeps the last 10, and a burst of answers overflows it."""
    return client.node.create_client(Segment, service, qos_profile=SERVICE_QOS)


def tiled_boxes(count: int) -> list[float]:
    """``count`` boxes tiled over the 128x96 test frame, flattened (x0, y0, x1, y1, ...)."""
    return [float(v) for i in range(count) for v in (i % 8 * 8, i // 8 * 8, 60.0, 60.0)]
