"""The operator's console: server-rendered pages from ``web/templates`` at ``/``."""

from appliance.ui.console import add_routes
from appliance.ui.pages import CONSOLE, ConsoleState, Page, PageRequest

__all__ = ["CONSOLE", "ConsoleState", "Page", "PageRequest", "add_routes"]
