-- wrk script: the same chat request body fusillade sends, so both measure the same mock work.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"model-0","messages":[{"role":"user","content":"Say hello to number 1."}],"max_tokens":16}'
