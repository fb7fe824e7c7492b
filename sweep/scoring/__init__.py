"""How a model is scored and the prompting baselines it is compared with (conf/eval): lm-eval's
tasks and scoring loop, demonstrations, calibration, the shared-prefix cache, the strongest
baseline's race and the cache of baseline scores."""
