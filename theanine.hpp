// theanine: Theano's programming model in C++. This header gives the whole public API.
#pragma once

#include "autodiff/grad.hpp"
#include "autodiff/verify_grad.hpp"
#include "compile/function.hpp"
#include "compile/rewrite.hpp"
#include "graph/config.hpp"
#include "graph/graph.hpp"
#include "graph/printing.hpp"
#include "graph/tensor.hpp"
#include "ops/blas.hpp"
#include "ops/composite.hpp"
#include "ops/elemwise.hpp"
#include "ops/nnet.hpp"
#include "ops/reduce.hpp"
#include "ops/random.hpp"
#include "ops/shape.hpp"
#include "models/dA.hpp"
