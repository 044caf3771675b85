"""The notebook face: magics, the status board, the panels (widgets, web, text) and progress text."""
