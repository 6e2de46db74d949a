"""The task registry: one module per task; add an eighth by writing a module and listing it here."""

from __future__ import annotations

from bot.inference.tasks import ask, embed, generate, mask, ner, sentiment, translate
from bot.inference.tasks.base import BatchContext, ModelInfo, Prepared, Task

TASKS: dict[str, Task] = {
    module.TASK.name: module.TASK for module in (generate, mask, translate, ask, ner, sentiment, embed)
}

__all__ = ["TASKS", "BatchContext", "ModelInfo", "Prepared", "Task"]
