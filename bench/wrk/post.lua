-- A small form POST, as a browser would send it: the replica's write path.
wrk.method = "POST"
wrk.body = "title=hello&done=0"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
