// csp — everything: channels, select, the asynchronous face, the runtime.
#pragma once

#include <channels/async.hpp>
#include <channels/channels.hpp>

#include "runtime.hpp"
#include "task_group.hpp"
#include "timers.hpp"
#include "wait_group.hpp"
