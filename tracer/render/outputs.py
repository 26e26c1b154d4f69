"""The registry of output formats (imports nothing: the commands read it to build --output)."""

OUTPUTS = {
    "text": "tracer.render.analysis:show_text",
    "json": "tracer.render.jsondoc:show_json",
}
"""--output NAME -> the view that writes an Analysis to stdout, as "module:function" (imported
when chosen; each takes the Analysis, the stream and the keywords `show` passes on). A new
format is a module in render/ and a line here: the commands' --output takes these names."""
