# One entry point for setup, tests and benchmarks. Everything installs into .venv in the repo.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

# The ROS interfaces (msg/, srv/) are generated with CMake against the ROS 2 wheels in the venv
# and installed into it: libraries to .venv/lib, the generated Python package to
# .venv/lib/segfast_ros_interfaces, which a .pth file puts on sys.path (segfast_ros/__init__.py
# joins it to the source tree's package). The hand-written modules stay the editable install.
VENV_ABS = $(abspath $(VENV))
ROS_BUILD := build/ros
ROS_PYDIR := lib/segfast_ros_interfaces
ROS_STAMP := $(VENV)/.ros-interfaces
ROS_SOURCES := CMakeLists.txt package.xml $(wildcard msg/*.msg srv/*.srv cmake/*.cmake)
# cmake also installs launch/, config/, scripts/ and models/ (CMakeLists.txt's install rules:
# share/segfast_ros/, lib/segfast_ros/), where the node's package lookups find them before the
# source tree. Their files and folders are the prerequisites of a re-install: a folder's time
# changes when a file in it is added, removed or renamed.
INSTALLED_SOURCES := $(shell find launch config scripts models -name __pycache__ -prune \
	-o -print 2>/dev/null)
INSTALL_STAMP := $(VENV)/.ros-installed-files

# ROS 2 tools without PyPI wheels (launch, launch_ros, ros2launch, ros2cli and its verbs,
# rosidl_runtime_py, composition_interfaces): their unmodified Jazzy sources, when a copy exists
# (../shared/vendor/ros2_jazzy, or ROS2_VENDOR_DIR). Test-time stand-ins for what rosdep brings
# on a robot: the tests of `ros2 launch`, `ros2 param` and `ros2 lifecycle` use them and skip
# without them; nothing at runtime imports them. Each source is built from a temporary copy
# outside the repository, so neither the vendored folder nor this tree is written to.
ROS2_VENDOR_DIR ?= $(firstword $(wildcard ../shared/vendor/ros2_jazzy))
VENDOR_STAMP := $(VENV)/.ros2-vendor
VENDOR_PY := launch launch_ros ros2launch rosidl_runtime_py \
	$(addprefix ros2cli_pkgs/,ros2cli ros2pkg ros2node ros2param ros2lifecycle ros2topic \
	ros2service ros2run ros2interface)
VENDOR_BUILD := build/vendor
# vision_msgs (Detection2DArray/Detection3DArray in and out, issue 17) is generated the same way,
# with a stamp of its own: the node and the replay use it when it is importable and disable those
# outputs without it, so a checkout without the vendored folder still sets up and runs.
VISION_MSGS_DIR := $(if $(ROS2_VENDOR_DIR),$(wildcard $(ROS2_VENDOR_DIR)/vision_msgs))
VISION_STAMP := $(VENV)/.vision-msgs

# One vendored interface package (ament_cmake + rosidl), generated with CMake against the wheels
# exactly like our own interfaces and installed into the venv. $(1): its folder name.
define vendor_interfaces
	AMENT_PREFIX_PATH=$(VENV_ABS) cmake -S $(ROS2_VENDOR_DIR)/$(1) -B $(VENDOR_BUILD)/$(1) \
		-DCMAKE_PROJECT_INCLUDE=$(CURDIR)/cmake/pip_wheels_fixup.cmake \
		-DCMAKE_PREFIX_PATH=$(VENV_ABS) -DPython3_EXECUTABLE=$(VENV_ABS)/bin/python \
		-DCMAKE_INSTALL_PREFIX=$(VENV_ABS) -DBUILD_TESTING=OFF
	AMENT_PREFIX_PATH=$(VENV_ABS) cmake --build $(VENDOR_BUILD)/$(1) --parallel $(JOBS)
	cmake --install $(VENDOR_BUILD)/$(1)
endef

.PHONY: setup build-tools test lint format bench demo clean

setup: $(STAMP) $(ROS_STAMP) $(INSTALL_STAMP) $(if $(ROS2_VENDOR_DIR),$(VENDOR_STAMP)) \
	$(if $(VISION_MSGS_DIR),$(VISION_STAMP))

# Checked before the long pip install, so a missing tool fails in seconds.
build-tools:
	@command -v cmake >/dev/null 2>&1 || { echo >&2 "make setup: cmake not found." \
		"It builds the ROS interfaces (msg/, srv/): apt-get install cmake"; exit 1; }
	@command -v $(CXX) >/dev/null 2>&1 && command -v $(CC) >/dev/null 2>&1 || { echo >&2 \
		"make setup: no C/C++ compiler ($(CC), $(CXX)). The generated ROS interface libraries" \
		"are C and C++: apt-get install g++ (or set CC and CXX)"; exit 1; }

$(STAMP): requirements.txt requirements-dev.txt requirements-ros.txt setup.py | build-tools
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e . \
		--config-settings editable_mode=compat
	touch $(STAMP)

# Rebuilt when the interfaces, the build files or the venv's packages change. The old generated
# package is removed first, so a deleted msg leaves no module behind.
$(ROS_STAMP): $(STAMP) $(ROS_SOURCES) | build-tools
	AMENT_PREFIX_PATH=$(VENV_ABS) cmake -S . -B $(ROS_BUILD) \
		-DCMAKE_PROJECT_INCLUDE=$(CURDIR)/cmake/pip_wheels_fixup.cmake \
		-DCMAKE_PREFIX_PATH=$(VENV_ABS) -DPython3_EXECUTABLE=$(VENV_ABS)/bin/python \
		-DCMAKE_INSTALL_PREFIX=$(VENV_ABS) -DPYTHON_INSTALL_DIR=$(ROS_PYDIR) \
		-DSEGFAST_INSTALL_PYTHON_SOURCES=OFF -DBUILD_TESTING=OFF
	AMENT_PREFIX_PATH=$(VENV_ABS) cmake --build $(ROS_BUILD) --parallel $(JOBS)
	rm -rf $(VENV)/$(ROS_PYDIR)
	cmake --install $(ROS_BUILD)
	echo $(VENV_ABS)/$(ROS_PYDIR) > "$$($(PY) -c 'import sysconfig; \
		print(sysconfig.get_path("purelib"))')/segfast_ros_interfaces.pth"
	touch $(ROS_STAMP)

# Re-installs launch/, config/, scripts/ and models/ into the venv. The copies the previous
# install made there (cmake's install manifest lists them) are deleted first, so a file removed
# from the source tree leaves no stale copy behind.
$(INSTALL_STAMP): $(ROS_STAMP) $(INSTALLED_SOURCES)
	grep -E '/(share/segfast_ros/(launch|config|models)|lib/segfast_ros)/' \
		$(ROS_BUILD)/install_manifest.txt | while IFS= read -r f; do rm -f "$$f"; done
	cmake --install $(ROS_BUILD)
	touch $(INSTALL_STAMP)

# launch_ros imports composition_interfaces.srv at import, so that package is generated first,
# with CMake against the wheels as our own interfaces are; its Python package goes to the venv's
# site-packages. The pure-Python packages install with --no-deps (their install_requires name
# Debian/rosdep packages, not the wheels' distributions).
$(VENDOR_STAMP): $(ROS_STAMP) requirements-vendor.txt | build-tools
	@test -d "$(ROS2_VENDOR_DIR)/launch" || { echo >&2 "make setup: ROS2_VENDOR_DIR=" \
		"$(ROS2_VENDOR_DIR) has no launch/ (expected the ros2_jazzy vendor folder)"; exit 1; }
	$(PY) -m pip install --quiet -r requirements-vendor.txt
	$(call vendor_interfaces,composition_interfaces)
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		for pkg in $(VENDOR_PY); do cp -r "$(ROS2_VENDOR_DIR)/$$pkg" "$$tmp/"; done && \
		chmod -R u+w "$$tmp" && \
		$(PY) -m pip install --quiet --no-deps --no-build-isolation \
			$(foreach pkg,$(VENDOR_PY),"$$tmp/$(notdir $(pkg))")
	touch $(VENDOR_STAMP)

# vision_msgs from its unmodified sources (~60 s on 2 cores); rebuilt with the venv's packages.
$(VISION_STAMP): $(STAMP) | build-tools
	$(call vendor_interfaces,vision_msgs)
	touch $(VISION_STAMP)

# NVIDIA's TensorRT API stubs, for the type checker only (basedpyright, set up in pyproject.toml:
# it checks the TensorRT modules against them). Kept out of the venv, where they would make
# `import tensorrt` succeed as an empty package; --no-deps because they require the TensorRT
# wheels, which download from NVIDIA's own index and do not install from PyPI.
TRT_STUBS := build/typing
$(TRT_STUBS)/.installed: requirements-typing.txt | $(STAMP)
	rm -rf $(TRT_STUBS)
	$(PY) -m pip install --quiet --no-deps --target $(TRT_STUBS) -r requirements-typing.txt
	touch $@

lint: setup $(TRT_STUBS)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/basedpyright --pythonpath $(PY)

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: setup lint
	$(PY) -m pytest -q

# The main job: a generated sample bag replayed with the demo model (models/demo) into
# out/demo: output bag, COCO JSON, contact sheet, and a summary.
demo: setup
	$(VENV)/bin/segfast demo --out out/demo

bench: setup
	$(VENV)/bin/segfast bench --model mobile_sam --json out/bench.json

clean:
	rm -rf $(VENV) build out .pytest_cache .ruff_cache
