// csp — channels and select, in one include.
#pragma once

#include "chan.hpp"
#include "select.hpp"
