// Boost.JSON and Boost.URL compiled from source into the fuzz build, so that their parsers
// are instrumented for coverage and sanitizers like our own code.
#include <boost/json/src.hpp>
#include <boost/url/src.hpp>
