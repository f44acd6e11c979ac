#!/usr/bin/env bash
# cargo's runner for the browser tests when web/test.sh runs them: wasm-bindgen-test-runner,
# started in the folder of test files that web/test.sh prepares ($WEB_TEST_SERVED), because the
# runner's web server serves its working directory besides the test page. The tests fetch the
# tiny model and the real tokenizer from there over HTTP, as the page fetches a model.
set -euo pipefail
cd "${WEB_TEST_SERVED:?web/test-runner.sh is run by web/test.sh, which sets WEB_TEST_SERVED}"
exec wasm-bindgen-test-runner "$@"
