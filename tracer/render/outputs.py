"""The registry of output formats (imports nothing: the commands read it to build --output)."""

VIEWS = ("hops", "grid", "summary")
"""The text view's kinds (--view): a table per packet, the class's grid, the summary."""

OUTPUTS = {
    "text": "tracer.render.analysis:show_text",
    "json": "tracer.render.jsondoc:show_json",
}
"""--output NAME -> the view that writes an Analysis to stdout, as "module:function" (imported
when chosen; each takes the Analysis, the stream and the keywords `show` passes on). A new
format is a module in render/ and a line here: the commands' --output takes these names."""
