using System.Buffers;
using System.Collections.Concurrent;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization.Metadata;
using k8s.Models;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.Serialization;
using YamlDotNet.Serialization.NamingConventions;
using YamlDotNet.Serialization.NodeDeserializers;
using YamlDotNet.Serialization.Utilities;

namespace Weft.Inventory;

/// <summary>A YAML value that does not fit where it is read into; <see cref="Start"/> is where the value starts.</summary>
internal sealed class YamlValueException(Mark start, string message, Exception? inner = null) : Exception(message, inner)
{
    public Mark Start { get; } = start;
}

/// <summary>
/// Turns one YAML node (its parser events) into JSON for a target type and reads that JSON with System.Text.Json, so a
/// YAML file needs no reflection over model types: KubernetesClient's models and Weft's own kinds have source-generated
/// JSON metadata, which a NativeAOT build keeps.
/// YAML scalars carry no type of their own here; each one is typed by the property it lands in, as the JSON metadata
/// describes it (<see cref="JsonTypeInfo.Properties"/>, element types), the way KubernetesClient's YAML deserializer
/// types them: a number or boolean is parsed by YamlDotNet's own scalar rules (quoted or not, YAML 1.1: <c>yes</c> is
/// true, <c>0x1F</c> is 31), a string takes any scalar's text (<c>version: 1</c> is the label "1"), an int-or-string
/// or a quantity takes the text as it is. Plain <c>null</c>, <c>~</c> and nothing are null everywhere. Where the
/// target is <see cref="object"/> or a JSON node, plain scalars are typed by their look, as KubernetesYaml's
/// "attempting unquoted string type deserialization" does. Aliases repeat their anchored node (merge keys, <c>&lt;&lt;</c>,
/// go through YamlDotNet's <see cref="MergingParser"/>, as KubernetesYaml does); what they repeat counts towards
/// <see cref="MaxNodes"/> and <see cref="MaxNesting"/>, so a chain of aliases cannot blow up.
/// A value that does not fit its target (a word for a port, a list for a label) is a <see cref="YamlValueException"/>
/// at that value; so is a single value its type's converter refuses (a malformed timestamp or quantity), each such
/// scalar being read alone first; what only the JSON reader finds is mapped back from its byte position to the YAML
/// value that produced those bytes, where it can be.
/// </summary>
internal sealed class TypedYamlJson
{
    /// <summary>YAML nodes (mappings, lists, scalars) one object may expand to, counting each node an alias repeats (a pod has about 50).</summary>
    public const int MaxNodes = 100_000;

    /// <summary>Mappings and sequences inside one another, aliases' content included; a Kubernetes object needs about 10.</summary>
    public const int MaxNesting = 64;

    // YamlDotNet's scalar rules, as KubernetesYaml's deserializer applies them; no type inspector: enums never reach it.
    private static readonly ScalarNodeDeserializer Scalars = new(
        attemptUnknownTypeDeserialization: true, new NullTypeConverter(), null!, YamlFormatter.Default, NullNamingConvention.Instance);

    private readonly JsonSerializerOptions _options;
    // Shapes depend only on the options' metadata: shared by every reader of the same options, built as types are met.
    private static readonly ConditionalWeakTable<JsonSerializerOptions, ConcurrentDictionary<Type, Shape>> ShapesByOptions = new();

    private readonly ConcurrentDictionary<Type, Shape> _shapes;
    private readonly ArrayBufferWriter<byte> _buffer = new();
    private readonly Utf8JsonWriter _writer;
    private readonly List<(long Offset, Mark Start)> _positions = [];
    private readonly OneScalar _scalar = new();
    private readonly ArrayBufferWriter<byte> _checkBuffer = new();
    private readonly Utf8JsonWriter _checkWriter;
    private IReadOnlyList<ParsingEvent> _events = [];
    private Dictionary<int, int>? _aliases;
    private int _budget;

    public TypedYamlJson(JsonSerializerOptions options)
    {
        _options = options;
        _shapes = ShapesByOptions.GetValue(options, static _ => new ConcurrentDictionary<Type, Shape>());
        _writer = new Utf8JsonWriter(_buffer, new JsonWriterOptions { MaxDepth = MaxNesting + 1 });
        _checkWriter = new Utf8JsonWriter(_checkBuffer);
    }

    /// <summary>
    /// Reads the node that starts at <paramref name="events"/>[0] and ends at its last event as <paramref name="type"/>.
    /// Throws <see cref="YamlValueException"/> for a value that does not fit, with its position where there is one,
    /// and whatever the JSON reader or a type's converter throws where there is none.
    /// </summary>
    public object? Read(IReadOnlyList<ParsingEvent> events, Type type)
    {
        if (events.Any(e => e is Scalar { Value: "<<", Style: ScalarStyle.Plain }))
        {
            events = Merge(events);
        }

        _events = events;
        _aliases = events.Any(e => e is AnchorAlias) ? ResolveAliases(events) : null;
        _budget = MaxNodes;
        _positions.Clear();
        _buffer.ResetWrittenCount();
        _writer.Reset(_buffer);
        try
        {
            var index = 0;
            WriteNode(ref index, ShapeOf(type), 1);
            _writer.Flush();
            return JsonSerializer.Deserialize(_buffer.WrittenSpan, _options.GetTypeInfo(type));
        }
        catch (JsonException ex) when (ex.BytePositionInLine is { } position && PositionOf(position) is { } start)
        {
            throw new YamlValueException(start, WrongTypePrefix + Describe(ex), ex);
        }
        finally
        {
            _events = [];
            _aliases = null;
        }
    }

    /// <summary>The reason a JSON read failed, without the JSON path and byte position (the caller names the YAML line).</summary>
    public static string Describe(Exception ex)
    {
        var message = ex is JsonException { InnerException: { } inner } ? inner.Message : ex.Message;
        var path = message.IndexOf(" Path: ", StringComparison.Ordinal);
        message = path >= 0 ? message[..path] : message;
        return message.Replace("The JSON value", "The value", StringComparison.Ordinal);
    }

    /// <summary>The YAML value whose JSON ends last before <paramref name="position"/> (the JSON is all one line).</summary>
    private Mark? PositionOf(long position)
    {
        Mark? found = null;
        foreach (var (offset, start) in _positions)
        {
            if (offset >= position)
            {
                break;
            }

            found = start;
        }

        return found;
    }

    private void WriteNode(ref int index, Shape shape, int depth)
    {
        var current = _events[index];
        if (--_budget < 0)
        {
            throw new YamlValueException(current.Start, $"more than {MaxNodes} YAML nodes in one object, counting what aliases repeat");
        }

        if (current is AnchorAlias)
        {
            var target = _aliases![index];
            WriteNode(ref target, shape, depth);
            index++;
            return;
        }

        _positions.Add((_writer.BytesCommitted + _writer.BytesPending, current.Start));
        switch (current)
        {
            case Scalar scalar:
                WriteScalar(scalar, shape);
                index++;
                return;
            case MappingStart or SequenceStart when depth > MaxNesting:
                throw new YamlValueException(current.Start, $"nested more than {MaxNesting} levels deep; a Kubernetes object needs far fewer");
            case MappingStart:
                WriteMapping(ref index, shape, depth);
                return;
            case SequenceStart:
                WriteSequence(ref index, shape, depth);
                return;
            default:
                throw new YamlValueException(current.Start, $"unexpected YAML event {current.GetType().Name}");
        }
    }

    private void WriteMapping(ref int index, Shape shape, int depth)
    {
        if (shape.Kind is ShapeKind.List or ShapeKind.String or ShapeKind.Boolean or ShapeKind.Number or ShapeKind.Text)
        {
            throw WrongType(_events[index], shape, "a mapping");
        }

        _writer.WriteStartObject();
        index++;
        while (_events[index] is not MappingEnd)
        {
            var keyEvent = _events[index];
            if (keyEvent is AnchorAlias)
            {
                keyEvent = _events[_aliases![index]];
            }

            if (keyEvent is not Scalar key)
            {
                throw new YamlValueException(keyEvent.Start, "a mapping key that is a mapping or a list; keys here are single values");
            }

            index++;
            if (shape.Kind == ShapeKind.Object)
            {
                if (!shape.TryGetProperty(key.Value, out var propertyShape))
                {
                    // Not a field of this type: ignored, as KubernetesYaml ignores unmatched properties.
                    SkipNode(ref index);
                    continue;
                }

                _writer.WritePropertyName(key.Value);
                WriteNode(ref index, propertyShape, depth + 1);
            }
            else
            {
                _writer.WritePropertyName(key.Value);
                WriteNode(ref index, shape.Kind == ShapeKind.Map ? shape.Element : AnyShape, depth + 1);
            }
        }

        _writer.WriteEndObject();
        index++;
    }

    private void WriteSequence(ref int index, Shape shape, int depth)
    {
        if (shape.Kind is not (ShapeKind.List or ShapeKind.Any or ShapeKind.Opaque))
        {
            throw WrongType(_events[index], shape, "a list");
        }

        _writer.WriteStartArray();
        index++;
        while (_events[index] is not SequenceEnd)
        {
            WriteNode(ref index, shape.Kind == ShapeKind.List ? shape.Element : AnyShape, depth + 1);
        }

        _writer.WriteEndArray();
        index++;
    }

    private void WriteScalar(Scalar scalar, Shape shape)
    {
        // KubernetesYaml's converters for these three read an empty string, quoted too, as null.
        if (IsNull(scalar) || (scalar.Value.Length == 0 && (shape.Type == typeof(byte[]) || shape.Type == typeof(IntOrString) || shape.Type == typeof(ResourceQuantity))))
        {
            _writer.WriteNullValue();
            return;
        }

        switch (shape.Kind)
        {
            case ShapeKind.Text when shape.Type != typeof(IntOrString):
                // Its converter could refuse the text, and would not say where: asked here, the refusal has the scalar's line.
                CheckText(scalar, shape.Type);
                _writer.WriteStringValue(scalar.Value);
                return;
            case ShapeKind.String or ShapeKind.Text or ShapeKind.Opaque:
                _writer.WriteStringValue(scalar.Value);
                return;
            case ShapeKind.Boolean or ShapeKind.Number:
                WriteTyped(scalar, shape.Type);
                return;
            case ShapeKind.Any:
                WriteTyped(scalar, typeof(object));
                return;
            default:
                throw WrongType(scalar, shape, $"'{scalar.Value}'");
        }
    }

    /// <summary>Reads the scalar's text alone as <paramref name="type"/>, with the same converter, to place a refusal at the scalar.</summary>
    private void CheckText(Scalar scalar, Type type)
    {
        _checkBuffer.ResetWrittenCount();
        _checkWriter.Reset(_checkBuffer);
        _checkWriter.WriteStringValue(scalar.Value);
        _checkWriter.Flush();
        try
        {
            JsonSerializer.Deserialize(_checkBuffer.WrittenSpan, _options.GetTypeInfo(type));
        }
        catch (Exception ex) when (ex is JsonException or FormatException or InvalidOperationException or NotSupportedException or ArgumentException or OverflowException)
        {
            throw new YamlValueException(scalar.Start, WrongTypePrefix + Describe(ex), ex);
        }
    }

    /// <summary>The scalar as YamlDotNet's deserializer reads it into <paramref name="type"/>, written as JSON.</summary>
    private void WriteTyped(Scalar scalar, Type type)
    {
        if (scalar.Value.Length == 0 && type != typeof(object))
        {
            throw new YamlValueException(scalar.Start, $"{WrongTypePrefix}expected {(type == typeof(bool) ? "true or false" : "a number")}, found an empty string");
        }

        object? value;
        try
        {
            _scalar.Current = scalar;
            Scalars.Deserialize(_scalar, type, static (_, _) => null, out value, static _ => null);
        }
        catch (OverflowException ex)
        {
            // YamlDotNet's own message is the runtime's "Arithmetic operation resulted in an overflow."
            throw new YamlValueException(scalar.Start, $"{WrongTypePrefix}{scalar.Value} is out of range for {type.Name}", ex);
        }
        catch (Exception ex) when (ex is FormatException or ArgumentException or IndexOutOfRangeException or InvalidOperationException)
        {
            throw new YamlValueException(scalar.Start, WrongTypePrefix + ex.Message, ex);
        }

        switch (value)
        {
            case null:
                _writer.WriteNullValue();
                break;
            case bool b:
                _writer.WriteBooleanValue(b);
                break;
            case string s:
                _writer.WriteStringValue(s);
                break;
            case ulong u:
                _writer.WriteNumberValue(u);
                break;
            case decimal m:
                _writer.WriteNumberValue(m);
                break;
            case float or double when Convert.ToDouble(value, CultureInfo.InvariantCulture) is var d && !double.IsFinite(d):
                throw new YamlValueException(scalar.Start, $"{WrongTypePrefix}'{scalar.Value}' is not a finite number");
            case float f:
                _writer.WriteNumberValue(f);
                break;
            case double d:
                _writer.WriteNumberValue(d);
                break;
            case IConvertible:
                _writer.WriteNumberValue(Convert.ToInt64(value, CultureInfo.InvariantCulture));
                break;
            default:
                _writer.WriteStringValue(scalar.Value);
                break;
        }
    }

    /// <summary>As YamlDotNet's deserializer has it: the null tag, or a plain <c>null</c>, <c>Null</c>, <c>NULL</c>, <c>~</c> or nothing.</summary>
    private static bool IsNull(Scalar scalar) =>
        (!scalar.Tag.IsEmpty && scalar.Tag.Value == "tag:yaml.org,2002:null")
        || (scalar.Style == ScalarStyle.Plain && scalar.Value is "" or "~" or "null" or "Null" or "NULL");

    private const string WrongTypePrefix = "a value of the wrong type: ";

    private static YamlValueException WrongType(ParsingEvent found, Shape expected, string what) =>
        new(found.Start, $"{WrongTypePrefix}expected {expected.Description}, found {what}");

    private void SkipNode(ref int index)
    {
        var level = 0;
        do
        {
            level += _events[index].NestingIncrease;
            index++;
        }
        while (level > 0);
    }

    /// <summary>For each alias, the index of the node it repeats: the last one anchored with its name before it.</summary>
    private static Dictionary<int, int> ResolveAliases(IReadOnlyList<ParsingEvent> events)
    {
        var resolved = new Dictionary<int, int>();
        var defined = new Dictionary<string, int>(StringComparer.Ordinal);
        var open = new List<(string? Anchor, int Start)>();
        for (var i = 0; i < events.Count; i++)
        {
            switch (events[i])
            {
                case AnchorAlias alias:
                    if (open.Any(o => o.Anchor == alias.Value.Value))
                    {
                        throw new YamlValueException(alias.Start, $"the alias *{alias.Value.Value} is inside the node it names");
                    }

                    resolved[i] = defined.TryGetValue(alias.Value.Value, out var target) ? target
                        : throw new YamlValueException(alias.Start, $"the alias *{alias.Value.Value} names no anchor before it");
                    break;
                case Scalar { Anchor.IsEmpty: false } scalar:
                    defined[scalar.Anchor.Value] = i;
                    break;
                case NodeEvent node when node.NestingIncrease > 0:
                    open.Add((node.Anchor.IsEmpty ? null : node.Anchor.Value, i));
                    break;
                case { NestingIncrease: < 0 } when open.Count > 0:
                    var (anchor, start) = open[^1];
                    open.RemoveAt(open.Count - 1);
                    if (anchor is not null)
                    {
                        defined[anchor] = start;
                    }

                    break;
            }
        }

        return resolved;
    }

    /// <summary>The events with merge keys (<c>&lt;&lt;: *anchor</c>) resolved by YamlDotNet's <see cref="MergingParser"/>.</summary>
    private static List<ParsingEvent> Merge(IReadOnlyList<ParsingEvent> events)
    {
        var merging = new MergingParser(new ListParser(events));
        var merged = new List<ParsingEvent>(events.Count);
        try
        {
            while (merging.MoveNext())
            {
                merged.Add(merging.Current!);
            }
        }
        catch (KeyNotFoundException ex)
        {
            var merge = events.First(e => e is Scalar { Value: "<<", Style: ScalarStyle.Plain });
            throw new YamlValueException(merge.Start, "a merge key (<<) names an anchor that is not a mapping defined before it", ex);
        }

        return merged;
    }

    /// <summary>Where there is no type to go by (inside a value a converter reads as a whole): scalars typed by their look.</summary>
    private Shape AnyShape => ShapeOf(typeof(object));

    private Shape ShapeOf(Type type) => ShapeOf(_shapes, _options, type);

    private static Shape ShapeOf(ConcurrentDictionary<Type, Shape> shapes, JsonSerializerOptions options, Type type) =>
        shapes.GetOrAdd(type, static (t, state) => new Shape(state.Shapes, state.Options, t), (Shapes: shapes, Options: options));

    private enum ShapeKind
    {
        /// <summary>A type with properties: keys are matched to them, other keys are skipped.</summary>
        Object,

        /// <summary>A collection: items take the element type.</summary>
        List,

        /// <summary>A dictionary: keys are written as they are, values take the element type.</summary>
        Map,

        String,
        Boolean,

        /// <summary>Any integer or floating-point type.</summary>
        Number,

        /// <summary>A single value read by a converter of its own (IntOrString, ResourceQuantity, DateTime, enums, byte[]): a scalar's text.</summary>
        Text,

        /// <summary>Some other type with a converter of its own: a scalar's text, a mapping or list as it is (its scalars typed by their look).</summary>
        Opaque,

        /// <summary><see cref="object"/> or a JSON node: scalars typed by their look.</summary>
        Any,
    }

    /// <summary>How YAML maps onto one type, from its JSON metadata; nested types are looked up as they are needed.</summary>
    private sealed class Shape
    {
        private readonly ConcurrentDictionary<Type, Shape> _shapes;
        private readonly JsonSerializerOptions _options;
        private readonly Type? _elementType;
        private readonly IList<JsonPropertyInfo>? _jsonProperties;
        private Dictionary<string, Type>? _properties;
        private Shape? _element;

        public Shape(ConcurrentDictionary<Type, Shape> shapes, JsonSerializerOptions options, Type type)
        {
            _shapes = shapes;
            _options = options;
            var underlying = Nullable.GetUnderlyingType(type) ?? type;
            Type = underlying;
            var info = options.GetTypeInfo(type);
            switch (info.Kind)
            {
                case JsonTypeInfoKind.Object:
                    Kind = ShapeKind.Object;
                    _jsonProperties = info.Properties;
                    Description = "a mapping";
                    return;
                case JsonTypeInfoKind.Enumerable:
                    Kind = ShapeKind.List;
                    _elementType = info.ElementType;
                    Description = "a list";
                    return;
                case JsonTypeInfoKind.Dictionary:
                    Kind = ShapeKind.Map;
                    _elementType = info.ElementType;
                    Description = "a mapping";
                    return;
            }

            (Kind, Description) = underlying.IsEnum || ScalarConverted.Contains(underlying) ? (ShapeKind.Text, "a single value") : Type.GetTypeCode(underlying) switch
            {
                TypeCode.String => (ShapeKind.String, "a string"),
                TypeCode.Boolean => (ShapeKind.Boolean, "true or false"),
                TypeCode.Byte or TypeCode.SByte or TypeCode.Int16 or TypeCode.UInt16 or TypeCode.Int32 or TypeCode.UInt32
                    or TypeCode.Int64 or TypeCode.UInt64 or TypeCode.Single or TypeCode.Double or TypeCode.Decimal => (ShapeKind.Number, "a number"),
                _ when underlying == typeof(object) || typeof(JsonNode).IsAssignableFrom(underlying) || underlying == typeof(JsonElement) => (ShapeKind.Any, "a value"),
                TypeCode.Char or TypeCode.DateTime => (ShapeKind.Text, "a single value"),
                _ => (ShapeKind.Opaque, "a value"),
            };
        }

        /// <summary>Types whose converters read a JSON string or number only: a mapping or list there is refused here, at its line.</summary>
        private static readonly HashSet<Type> ScalarConverted =
        [
            typeof(IntOrString), typeof(ResourceQuantity), typeof(byte[]), typeof(DateTimeOffset), typeof(TimeSpan), typeof(Guid), typeof(Uri), typeof(System.Version),
        ];

        public ShapeKind Kind { get; }

        /// <summary>The type without <see cref="Nullable{T}"/>.</summary>
        public Type Type { get; }

        /// <summary>What a YAML value must be to fit, for error messages: "a list", "a number".</summary>
        public string Description { get; }

        public Shape Element => _element ??= ShapeOf(_shapes, _options, _elementType!);

        public bool TryGetProperty(string name, out Shape shape)
        {
            if (Properties.TryGetValue(name, out var type))
            {
                shape = ShapeOf(_shapes, _options, type);
                return true;
            }

            shape = null!;
            return false;
        }

        private Dictionary<string, Type> Properties => _properties ??= BuildProperties();

        private Dictionary<string, Type> BuildProperties()
        {
            var properties = new Dictionary<string, Type>(StringComparer.Ordinal);
            foreach (var property in _jsonProperties!)
            {
                // [YamlIgnore] keeps a property out of files (a Gateway's status, which only the API server holds).
                if (property.AttributeProvider?.IsDefined(typeof(YamlIgnoreAttribute), inherit: true) != true)
                {
                    properties[property.Name] = property.PropertyType;
                }
            }

            return properties;
        }
    }

    /// <summary>One scalar as a parser, for YamlDotNet's scalar deserializer.</summary>
    private sealed class OneScalar : IParser
    {
        public ParsingEvent? Current { get; set; }

        public bool MoveNext()
        {
            Current = null;
            return false;
        }
    }

    /// <summary>Buffered events as a parser, for <see cref="MergingParser"/>.</summary>
    private sealed class ListParser(IReadOnlyList<ParsingEvent> events) : IParser
    {
        private int _next;

        public ParsingEvent? Current { get; private set; }

        public bool MoveNext()
        {
            Current = _next < events.Count ? events[_next++] : null;
            return Current is not null;
        }
    }
}
