"""The compliance officers' page ``/admin/ui`` (server-rendered, no JavaScript): ``pages`` for the routes,
``session`` for the browser session, ``console`` for what the page keeps."""
