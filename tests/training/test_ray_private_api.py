"""Every private (or V2-internal) Ray name rlhfctl relies on still exists with the shape it is used with.

rlhfctl's torch backend (``training/torch_backend.py``), its lean trainer (``training/ray_trainer.py``), the
driver's failure messages (``training/run_failures.py``) and the embedded Ray's settings (``training/ray_cluster.py``)
use Ray Train internals, so pyproject pins ``ray[train]`` to the minor version tested. A Ray upgrade that moves
or renames any of them fails here, in CI, instead of in a user's run. The last test keeps the list complete: any
new import of a private Ray module or name in ``rlhfctl/`` must be added here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

pytest.importorskip("ray.train")

PACKAGE = Path(__file__).resolve().parents[2] / "rlhfctl"
PYPROJECT = PACKAGE.parent / "pyproject.toml"

# (module, name) of every import from a private Ray module or of a private or undocumented name, as rlhfctl
# spells it.
PRIVATE_IMPORTS = {
    ("ray.train.v2._internal.util", "TrainingFramework"),  # torch_backend: the framework tag of our backend
    ("ray.train._internal.utils", "get_address_and_port"),  # torch_backend: MASTER_ADDR/PORT on worker 0
    ("ray.train.torch.config", "TorchConfigContextManager"),  # torch_backend: the worker's default device
    ("ray.train.torch.config", "_set_torch_distributed_env_vars"),  # torch_backend: RANK, LOCAL_RANK, ...
    ("ray.train.torch.config", "_setup_torch_process_group"),  # torch_backend: init_process_group on a worker
    ("ray.train.torch.config", "_shutdown_torch"),  # torch_backend: destroy_process_group at the end
    ("ray.train.v2.api.data_parallel_trainer", "DataParallelTrainer"),  # ray_trainer: LeanTrainer's base
    ("ray.train.v2._internal.execution.scaling_policy", "FixedScalingPolicy"),  # ray_trainer: no autoscaler requests
    # ray_trainer: on the embedded Ray, the controller and workers inherit Ray Train's settings (no runtime env)
    ("ray.train.v2._internal.execution.controller", "TrainController"),
    ("ray.train.v2._internal.constants", "get_env_vars_to_propagate"),
    ("ray.train.v2._internal.constants", "DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE"),
    ("ray._common.constants", "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR"),
    ("ray._private", "node"),  # ray_head: the embedded Ray's head node without the head processes it never uses
    ("ray._private", "ray_constants"),  # ray_head: the raylet's process type, one more prestarted worker process
    ("ray._private", "services"),  # ray_head: where the raylet's command line is started
    # controller_barrier: the worker group's synchronisation barrier in the controller's process
    ("ray.train.v2._internal.execution.checkpoint", "sync_actor"),
    ("ray.train.v2._internal.execution.worker_group", "state"),
    ("ray.train.v2._internal.execution.worker_group", "worker_group"),
    ("ray.train.v2._internal.execution.worker_group.state", "WorkerGroupState"),
    ("ray.train.v2._internal.execution.worker_group.state", "WorkerGroupStateBuilder"),
    ("ray.train.v2._internal.execution.worker_group.worker_group", "WorkerGroup"),
}

# Ray's own environment variables rlhfctl sets, and where Ray defines each name.
RAY_ENVIRONMENT = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": ("ray.train.v2._internal.constants", "HEALTH_CHECK_INTERVAL_S_ENV_VAR"),
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": ("ray.train.v2._internal.constants",
                                               "WORKER_GROUP_START_TIMEOUT_S_ENV_VAR"),
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": ("ray.train.v2._internal.constants", "ENABLE_PREEMPTION_WATCHER_ENV_VAR"),
    "RAY_TRAIN_METRICS_ENABLED": ("ray.train.v2._internal.constants", "METRICS_ENABLED_ENV_VAR"),
    "RAY_TRAIN_V2_ENABLED": ("ray.train.v2._internal.constants", "V2_ENABLED_ENV_VAR"),
    "RAY_AUTH_MODE": ("ray._private.authentication.authentication_token_setup", "AUTH_MODE_ENV_VAR"),
    "RAY_USAGE_STATS_ENABLED": ("ray._common.usage.usage_constants", "USAGE_STATS_ENABLED_ENV_VAR"),
    "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": ("ray._common.constants", "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR"),
    # ray_cluster: the embedded Ray's worker processes import Ray Train before their first task (preload_ray_train)
    "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR": ("ray._private.ray_constants", "WORKER_PROCESS_SETUP_HOOK_ENV_VAR"),
}

# Ray's C++ settings (RayConfig, read from RAY_<name> by the raylet) rlhfctl sets on the embedded Ray.
RAYLET_SETTINGS = {"RAY_worker_maximum_startup_concurrency", "RAY_num_workers_soft_limit"}


@pytest.mark.parametrize(("module", "name"), sorted(PRIVATE_IMPORTS))
def test_each_private_name_resolves(module, name):
    assert hasattr(importlib.import_module(module), name), f"{module}.{name} is gone: see pyproject's ray pin"


def test_the_torch_helpers_take_the_arguments_rlhfctl_passes():
    from ray.train._internal.utils import get_address_and_port
    from ray.train.torch import config as torch_config
    from ray.train.v2._internal.util import TrainingFramework

    setup = inspect.signature(torch_config._setup_torch_process_group).parameters
    assert {"backend", "world_rank", "world_size", "init_method", "timeout_s"} <= set(setup)
    assert "destroy_process_group" in inspect.signature(torch_config._shutdown_torch).parameters
    assert not inspect.signature(torch_config._set_torch_distributed_env_vars).parameters
    assert not inspect.signature(get_address_and_port).parameters
    assert TrainingFramework.TORCH is not None
    context = torch_config.TorchConfigContextManager()
    assert hasattr(context, "__enter__") and hasattr(context, "__exit__")


def test_the_backend_and_worker_group_hooks_rlhfctl_uses():
    from ray.train.backend import Backend, BackendConfig
    from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

    for name in ("backend_cls", "train_func_context", "framework"):
        assert isinstance(inspect.getattr_static(BackendConfig, name), property), name
    for name in ("on_start", "on_shutdown"):
        assert list(inspect.signature(getattr(Backend, name)).parameters) == ["self", "worker_group", "backend_config"]
    for name in ("execute", "execute_async", "execute_single", "execute_single_async", "__len__"):
        assert callable(getattr(WorkerGroup, name, None)), f"WorkerGroup.{name}"


def test_the_trainer_hook_and_failure_attributes_rlhfctl_reads():
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    from ray.train.v2.api.exceptions import ControllerError, TrainingFailedError, WorkerGroupError

    from rlhfctl.training import ray_trainer, run_failures

    assert callable(getattr(DataParallelTrainer, "_create_default_callbacks", None))  # LeanTrainer overrides it
    # LeanTrainer swaps the scaling policy fit() passes here; FixedSizeWithoutAutoscaler overrides these
    assert "scaling_policy=create_scaling_policy" in inspect.getsource(DataParallelTrainer.fit)
    assert callable(getattr(DataParallelTrainer, "_initialize_and_run_controller", None))
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

    for name in ("after_controller_start", "_maybe_send_resource_request", "_send_resource_request"):
        assert callable(getattr(FixedScalingPolicy, name, None)), f"FixedScalingPolicy.{name}"
    assert "TrainAutoscalingCoordinatorClient(" in inspect.getsource(FixedScalingPolicy.after_controller_start)
    assert "datasets" in inspect.signature(DataParallelTrainer.__init__).parameters  # LeanTrainer reads .datasets
    # run_failures.describe_ray_failure and user_error_inside read these
    assert issubclass(WorkerGroupError, TrainingFailedError) and issubclass(ControllerError, TrainingFailedError)
    assert vars(WorkerGroupError("boom", {0: ValueError("x")}))["worker_failures"][0].args == ("x",)
    assert "controller_failure" in vars(ControllerError(ValueError("x")))
    assert WorkerGroupStartupTimeoutError.__name__ in inspect.getsource(run_failures.describe_ray_failure)
    # the callbacks LeanTrainer leaves out (by class name) still exist under those names
    callbacks = importlib.import_module("ray.train.v2._internal.callbacks")
    placement = importlib.import_module("ray.train.v2._internal.callbacks.placement_group_callback")
    assert {"DatasetsCallback"} <= set(vars(callbacks)) and ray_trainer.NEVER_NEEDED == {"DatasetsCallback"}
    assert ray_trainer.NOT_NEEDED_ON_OWN_CLUSTER == {"PlacementGroupCleanerCallback"}
    assert hasattr(placement, "PlacementGroupCleanerCallback")


def test_the_controller_and_worker_group_steps_lean_trainer_repeats_without_a_runtime_env():
    """LeanTrainer starts the controller as DataParallelTrainer does, minus the runtime env; the controller builds
    its worker group from ``worker_group_cls``, which takes its workers' runtime env from
    ``_get_worker_runtime_env`` and starts the synchronisation actor without one of its own."""
    from ray.train.v2._internal.execution.controller import TrainController
    from ray.train.v2._internal.execution.worker_group import WorkerGroup
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    starting = inspect.getsource(DataParallelTrainer._initialize_and_run_controller)
    for step in ('runtime_env={"env_vars": env_vars}', "get_env_vars_to_propagate()", "num_cpus=0",
                 "self._register_sigint_handler(controller)", "ray.get(controller.run.remote())",
                 "return ray.get(controller.get_result.remote())"):
        assert step in starting, step
    assert "env_vars.setdefault(" in starting and "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR" in starting
    # LeanTrainer wraps Ray's Ctrl-C handler (installed on SIGINT) to keep the controller's progress events first:
    # the abort that handler asks for ends the controller's process
    registering = DataParallelTrainer._register_sigint_handler
    assert list(inspect.signature(registering).parameters) == ["self", "controller"]
    assert "signal.signal(signal.SIGINT, sigint_handler)" in inspect.getsource(registering)
    assert "ray.actor.exit_actor()" in inspect.getsource(TrainController.abort)
    assert TrainController.worker_group_cls is WorkerGroup
    assert "self.worker_group_cls.create(" in inspect.getsource(TrainController)
    assert "cls(train_run_context, worker_group_context, callbacks)" in inspect.getsource(WorkerGroup.create)
    assert isinstance(inspect.getattr_static(WorkerGroup, "_get_worker_runtime_env"), staticmethod)
    assert list(inspect.signature(WorkerGroup._get_worker_runtime_env).parameters) == ["custom_runtime_env"]
    workers = inspect.getsource(WorkerGroup)
    assert "self._get_worker_runtime_env(" in workers
    sync_actor = workers[workers.index("SynchronizationActor.options("):]
    assert "runtime_env" not in sync_actor[:sync_actor.index(".remote(")]


def test_the_raylet_is_started_with_one_prestarted_worker_process_per_cpu_through_start_ray_process():
    """ray_head raises ``--num_prestart_python_workers`` in the command ``services.start_raylet`` hands to
    ``start_ray_process`` as the raylet's; ``Node.start_raylet`` is what a node calls to start it."""
    from ray._private import node, ray_constants, services

    starting = inspect.getsource(services.start_raylet)
    assert '"--num_prestart_python_workers={}".format(int(resource_and_label_spec.num_cpus))' in starting
    assert "start_ray_process(\n        command,\n        ray_constants.PROCESS_TYPE_RAYLET," in starting
    assert list(inspect.signature(services.start_ray_process).parameters)[:2] == ["command", "process_type"]
    assert ray_constants.PROCESS_TYPE_RAYLET == "raylet"
    assert "ray._private.services.start_raylet(" in inspect.getsource(node.Node.start_raylet)
    assert "self.start_raylet(" in inspect.getsource(node.Node.start_ray_processes)


def test_the_head_node_ray_init_starts_can_leave_out_the_monitors_and_the_api_server():
    """ray.init(address="local") builds its head as ``ray._private.node.Node(ray_params, head=True, ...)`` (looked up
    on the module at call time, so LeanHeadNode stands in), and the node starts the monitor, the log monitor and the
    API server only as these settings and this method say."""
    from ray._private import node, parameter
    from ray._private import worker as ray_worker

    starting = inspect.getsource(ray_worker.init)
    assert "_global_node = ray._private.node.Node(" in starting and "head=True" in starting
    assert {"no_monitor", "include_log_monitor"} <= set(inspect.signature(parameter.RayParams).parameters)
    assert "head" in inspect.signature(node.Node.__init__).parameters
    head = inspect.getsource(node.Node.start_head_processes)
    assert "if not self._ray_params.no_monitor:" in head and "self.start_api_server(" in head
    assert "if self._ray_params.include_log_monitor:" in inspect.getsource(node.Node.start_ray_processes)
    assert list(inspect.signature(node.Node.start_api_server).parameters) == ["self", "include_dashboard",
                                                                              "raise_on_failure"]
    assert "self._webui_url" in inspect.getsource(node.Node.start_api_server)


def test_prepare_model_takes_the_ddp_options_rlhfctl_passes():
    from ray.train.torch import prepare_model

    assert {"parallel_strategy", "parallel_strategy_kwargs"} <= set(inspect.signature(prepare_model).parameters)


@pytest.mark.parametrize("variable", sorted(RAY_ENVIRONMENT))
def test_each_ray_environment_variable_is_still_read_by_ray(variable):
    module, name = RAY_ENVIRONMENT[variable]
    assert getattr(importlib.import_module(module), name) == variable


@pytest.mark.parametrize("variable", sorted(RAYLET_SETTINGS))
def test_each_raylet_setting_is_still_read_by_the_raylet(variable):
    import ray

    raylet = Path(ray.__file__).parent / "core" / "src" / "ray" / "raylet" / "raylet"
    assert variable.encode() in raylet.read_bytes(), f"the raylet no longer reads {variable}"


def test_a_default_worker_runs_the_setup_hook_named_in_its_environment_as_a_module_path():
    """``preload_ray_train`` reaches the embedded Ray's workers as ``module.function`` in the environment: Ray's
    default worker reads the variable and, for a value that is not a registered function, imports and calls it."""
    import ray
    from ray._private.runtime_env import setup_hook

    from rlhfctl.training.ray_cluster import EMBEDDED_RAY_ENVIRONMENT

    worker_source = (Path(ray.__file__).parent / "_private" / "workers" / "default_worker.py").read_text()
    assert "os.getenv(\n        ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR" in worker_source
    assert "load_and_execute_setup_hook(worker_process_setup_hook_key)" in worker_source
    hook = EMBEDDED_RAY_ENVIRONMENT["__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"]
    assert not hook.startswith(setup_hook.RUNTIME_ENV_FUNC_IDENTIFIER)
    assert setup_hook.load_and_execute_setup_hook(hook) is None  # imported and run without an error


def test_the_worker_start_timeout_default_matches_rays():
    from ray.train.v2._internal.constants import DEFAULT_WORKER_GROUP_START_TIMEOUT_S

    from rlhfctl.training.ray_cluster import DEFAULT_WORKER_START_TIMEOUT_S, WORKER_START_TIMEOUT_ENV

    assert DEFAULT_WORKER_START_TIMEOUT_S == DEFAULT_WORKER_GROUP_START_TIMEOUT_S
    assert WORKER_START_TIMEOUT_ENV in RAY_ENVIRONMENT


def _ray_imports_and_variables() -> tuple[set[tuple[str, str]], set[str]]:
    """Every (module, name) imported from a private Ray module or private name, and every RAY_* string, in rlhfctl/."""
    imports: set[tuple[str, str]] = set()
    variables: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
                parts = node.module.split(".")
                for alias in node.names:
                    if any(part.startswith("_") or part == "v2" for part in parts) or alias.name.startswith("_"):
                        imports.add((node.module, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "ray" and any(part.startswith("_") or part == "v2" for part in parts):
                        imports.add((alias.name, ""))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"RAY_[A-Za-z0-9_]+", node.value):
                variables.add(node.value)
    return imports, variables


def test_this_list_names_every_private_ray_import_and_variable_in_the_package():
    imports, variables = _ray_imports_and_variables()
    assert imports <= PRIVATE_IMPORTS, f"add {sorted(imports - PRIVATE_IMPORTS)} to PRIVATE_IMPORTS (and check the pin)"
    source = "\n".join(path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py"))
    assert all(f"from {module} import {name}" in source for module, name in PRIVATE_IMPORTS)  # none listed unused
    known = set(RAY_ENVIRONMENT) | RAYLET_SETTINGS
    assert variables <= known, f"add {sorted(variables - known)} to RAY_ENVIRONMENT or RAYLET_SETTINGS"


def test_pyproject_pins_ray_to_the_tested_minor_version():
    import ray

    pin = re.search(r'"ray\[train\]>=(\d+)\.(\d+),<(\d+)\.(\d+)"', PYPROJECT.read_text(encoding="utf-8"))
    assert pin, "pyproject.toml must pin ray[train] as >=X.Y,<X.Z while private Ray APIs are used"
    low, high = (int(pin[1]), int(pin[2])), (int(pin[3]), int(pin[4]))
    installed = tuple(int(part) for part in ray.__version__.split(".")[:2])
    assert low <= installed < high, f"ray {ray.__version__} is outside the pin {pin[0]}"
