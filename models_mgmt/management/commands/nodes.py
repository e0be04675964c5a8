from django.utils import timezone

from models_mgmt import placements
from models_mgmt.models import Node
from saas_platform.cli import ScriptableCommand, format_table


class Command(ScriptableCommand):
    help = "Add and list GPU nodes. Each node runs a worker: NODE_NAME=NAME celery ... -Q node.NAME"

    def add_arguments(self, parser):
        actions = self.add_actions(parser)
        add = actions.add_parser("add", help="add a node with its VRAM budget")
        add.add_argument("name", metavar="NAME")
        add.add_argument("--vram-bytes", type=int, required=True, metavar="N")
        actions.add_parser("list", help="list nodes")

    def handle_add(self, options):
        node = placements.node_add(name=options["name"], vram_bytes=options["vram_bytes"])
        self.stdout.write(f"added node {node.name} (queue {node.queue})")

    def handle_list(self, options):
        rows = [("NODE", "BUDGET", "QUEUE", "HEARTBEAT")]
        now = timezone.now()
        for node in Node.objects.all():
            beat = (
                "never"
                if node.last_heartbeat is None
                else (f"{int((now - node.last_heartbeat).total_seconds())}s ago")
            )
            rows.append((node.name, str(node.vram_budget_bytes), node.queue, beat))
        for line in format_table(rows):
            self.stdout.write(line)
