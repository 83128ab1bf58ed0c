#!/usr/bin/env python3
"""A planner's view of segfast: a camera stream in, a ``~/segment`` call, masks out.

Run the node in one terminal (the demo model, synthetic scenes only)::

    segfast_node --ros-args -p model_dir:=demo -r image:=/camera/image_raw

and this client in another::

    python examples/planner_client.py

The client plays the camera too: it publishes generated frames (``segfast_ros.bench.scenes``)
on ``/camera/image_raw`` at 10 Hz. For each of a few frames it asks the node for the mask of one
object, with that object's box as the prompt and the frame's stamp, and prints the answer and
its IoU with the generator's ground truth; it also counts the SegEvery instances the node
publishes on ``~/instances``. A planner does the same with a detector's box or a clicked point.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from segfast_ros.bench.scenes import generate_sequence
from segfast_ros.masks import rle_to_mask
from segfast_ros.msg import InstanceArray
from segfast_ros.ros.conversions import rgb_to_image_msg
from segfast_ros.srv import Segment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--node", default="/segfast", help="the segfast node's full name")
    parser.add_argument("--topic", default="/camera/image_raw", help="camera topic to publish")
    parser.add_argument("--frames", type=int, default=5, help="frames to ask about")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per step")
    args = parser.parse_args(argv)

    rclpy.init()
    node = rclpy.create_node("planner_client")
    camera = node.create_publisher(Image, args.topic, qos_profile_sensor_data)
    segment = node.create_client(Segment, f"{args.node}/segment")
    instances: list[int] = []
    node.create_subscription(
        InstanceArray, f"{args.node}/instances", lambda m: instances.append(len(m.instances)), 10
    )
    # The node spins on a thread of its own, and each call waits for its own answer: this stays
    # as fast call after call (rclpy.spin_until_future_complete per call slows down in a loop).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def call(request: Segment.Request) -> Segment.Response | None:
        """One ~/segment call, or None when no answer came within --timeout."""
        answered = threading.Event()
        future = segment.call_async(request)
        future.add_done_callback(lambda _: answered.set())
        if not answered.wait(args.timeout):
            segment.remove_pending_request(future)
            return None
        return future.result()

    try:
        if not segment.wait_for_service(timeout_sec=args.timeout):
            print(f"no service {args.node}/segment: is segfast_node running?", file=sys.stderr)
            return 1
        frames = generate_sequence(args.seed, args.frames, (240, 320))
        ious = []
        for i, scene in enumerate(frames):
            stamp = node.get_clock().now().to_msg()
            header = Header(stamp=stamp, frame_id="camera")
            camera.publish(rgb_to_image_msg(scene.image, header))
            target = int(np.argmax(scene.masks.reshape(len(scene), -1).sum(1)))  # the largest
            request = Segment.Request(stamp=stamp, boxes=[float(v) for v in scene.boxes[target]])
            # The node answers once the frame is encoded; it waits briefly for a frame in flight,
            # and says so when the frame has not arrived yet: then publish and ask again.
            deadline = time.monotonic() + args.timeout
            while True:
                response = call(request)
                if response is not None and response.success:
                    break
                if time.monotonic() > deadline:
                    reason = response.message if response is not None else "no response"
                    print(f"frame {i}: {reason}", file=sys.stderr)
                    return 1
                camera.publish(rgb_to_image_msg(scene.image, header))
            best = response.results[0].masks[0]
            mask = rle_to_mask(
                {"size": [best.mask_height, best.mask_width], "counts": list(best.rle_counts)}
            )
            truth = scene.masks[target]
            iou = float((mask & truth).sum() / max((mask | truth).sum(), 1))
            ious.append(iou)
            print(
                f"frame {i}: object {target} ({scene.kinds[target]}), box prompt -> mask of "
                f"{best.area} px, predicted IoU {best.score:.2f}, IoU with ground truth {iou:.2f}"
            )
        time.sleep(2.0)  # the executor thread collects SegEvery publications meanwhile
        print(
            f"mean IoU {np.mean(ious):.2f} over {len(ious)} frames; {len(instances)} SegEvery "
            f"messages on {args.node}/instances ({sum(instances)} instances)"
        )
        return 0
    finally:
        executor.shutdown()  # ends spin(); join before the context goes, or rclpy aborts
        spinner.join(5.0)
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
