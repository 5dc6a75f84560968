-- Base URLs stored before `baseUrl` was normalised (a trailing `/v1`, as
-- OpenAI client settings hold it, was probed as `/v1/v1/models`): store the
-- server root, as `registry::validate_base_url` now does for new ones.
-- Idempotent: the boot-time repair may run it again.
UPDATE endpoints SET base_url = rtrim(trim(base_url), '/');
UPDATE endpoints SET base_url = rtrim(substr(base_url, 1, length(base_url) - 3), '/')
WHERE substr(base_url, -3) = '/v1';
