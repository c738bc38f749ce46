from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


@input_schema("a", StandardPythonParameterType(1))
@input_schema("b", StandardPythonParameterType("x"))
@output_schema(StandardPythonParameterType({"sum": "1x"}))
def run(a, b="default"):
    return {"sum": f"{a}{b}"}
