-- target: where and with which secret a delivery for webhook $1 goes; no
-- row when the webhook was deleted.
SELECT url, secret FROM webhooks WHERE id = $1
