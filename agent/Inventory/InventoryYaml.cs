using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using Weft.Policy;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;

namespace Weft.Inventory;

/// <summary>
/// Reads a stream of Kubernetes objects with KubernetesClient's own YAML support, and turns every way
/// that can fail into an <see cref="InventoryLoadException"/> with the line and column of the cause.
/// KubernetesYaml alone reports an unknown kind or a document without apiVersion as a bare
/// KeyNotFoundException and an empty document as a NullReferenceException; a first pass over the
/// parser events finds those with their positions before the real load runs.
/// </summary>
internal static partial class InventoryYaml
{
    // "apiVersion/kind" (group included in apiVersion) for every model type KubernetesClient knows:
    // the same set LoadAllFromString uses when given no type map.
    private static readonly HashSet<string> KnownKinds = typeof(V1Pod).Assembly.GetTypes()
        .Select(t => t.GetCustomAttribute<KubernetesEntityAttribute>())
        .OfType<KubernetesEntityAttribute>()
        .Select(a => string.IsNullOrEmpty(a.Group) ? $"{a.ApiVersion}/{a.Kind}" : $"{a.Group}/{a.ApiVersion}/{a.Kind}")
        .ToHashSet(StringComparer.Ordinal);

    public static List<IKubernetesObject> Load(string content, string path, IDictionary<string, Type>? extraKinds = null)
    {
        // Weft's own custom resources (policies) are always known; the caller's extra kinds may add to or replace them.
        var kinds = new Dictionary<string, Type>(PolicyKinds.All, StringComparer.Ordinal);
        foreach (var (key, type) in extraKinds ?? new Dictionary<string, Type>())
        {
            kinds[key] = type;
        }

        extraKinds = kinds;
        var documents = new List<(int Line, string Kind)>();
        var text = Precheck(content, path, extraKinds, documents);

        List<object> loaded;
        try
        {
            loaded = KubernetesYaml.LoadAllFromString(text, extraKinds);
        }
        catch (YamlException ex)
        {
            // Wrong field types surface as "Exception during deserialization" around the real reason.
            var line = Line(ex.Start);
            var document = documents.LastOrDefault(d => d.Line <= line);
            var where = document.Kind is null ? "" : $"in the {document.Kind} starting at line {document.Line}: ";
            throw new InventoryLoadException(path, line, Column(ex.Start), where + Describe(ex), ex);
        }
        catch (Exception ex)
        {
            throw new InventoryLoadException(path, null, null, $"cannot read the objects: {ex.Message}", ex);
        }

        var objects = new List<IKubernetesObject>(loaded.Count);
        foreach (var obj in loaded)
        {
            if (obj is IKubernetesObject kubernetesObject)
            {
                objects.Add(kubernetesObject);
            }
        }

        return objects;
    }

    /// <summary>
    /// Checks syntax and each document's apiVersion and kind, and returns the text to hand to KubernetesYaml:
    /// the same text, except that the "---" of empty documents (a trailing "---" is common) becomes a
    /// comment of the same length, so positions in later errors stay true.
    /// </summary>
    private static string Precheck(string content, string path, IDictionary<string, Type>? extraKinds, List<(int Line, string Kind)> documents)
    {
        StringBuilder? rewritten = null;
        var scanner = new Scanner(new StringReader(content));
        try
        {
            var parser = new Parser(scanner);
            parser.Consume<StreamStart>();
            while (parser.TryConsume<DocumentStart>(out var documentStart))
            {
                if (parser.TryConsume<Scalar>(out var scalar))
                {
                    if (scalar.Value.Length != 0 || !scalar.Tag.IsEmpty)
                    {
                        throw new InventoryLoadException(path, Line(scalar.Start), Column(scalar.Start),
                            $"expected a Kubernetes object (a mapping with apiVersion and kind), found the value '{scalar.Value}'");
                    }

                    var marker = (int)documentStart.End.Index - 3;
                    if (documentStart.IsImplicit || marker < 0 || string.CompareOrdinal(content, marker, "---", 0, 3) != 0)
                    {
                        throw new InventoryLoadException(path, Line(documentStart.Start), Column(documentStart.Start), "empty YAML document");
                    }

                    rewritten ??= new StringBuilder(content);
                    rewritten[marker] = '#';
                }
                else if (parser.TryConsume<MappingStart>(out var mapping))
                {
                    documents.Add((Line(mapping.Start), CheckKind(parser, mapping, path, extraKinds)));
                }
                else
                {
                    var current = parser.Current!;
                    throw new InventoryLoadException(path, Line(current.Start), Column(current.Start),
                        "expected a Kubernetes object (a mapping with apiVersion and kind), found a list or alias");
                }

                parser.Consume<DocumentEnd>();
            }

            parser.Consume<StreamEnd>();
        }
        catch (YamlException ex) when (ex.Message.Contains("invalid tab", StringComparison.Ordinal))
        {
            // YamlDotNet marks the start of the enclosing mapping; the scanner stopped at the tab itself.
            var tab = scanner.CurrentPosition;
            throw new InventoryLoadException(path, Line(tab), Column(tab), "a tab indents this line; YAML indents with spaces only", ex);
        }
        catch (YamlException ex)
        {
            throw new InventoryLoadException(path, Line(ex.Start), Column(ex.Start), Describe(ex), ex);
        }
        catch (ArgumentException ex)
        {
            // YamlDotNet's parser refuses a malformed tag ("!!+!") this way, without a position; the scanner
            // has just read the tag, so its position is right after it.
            var stop = scanner.CurrentPosition;
            throw new InventoryLoadException(path, Line(stop), Column(stop), $"a YAML tag that is not a valid URI ({ex.Message.Replace(" (Parameter 'value')", "", StringComparison.Ordinal)})", ex);
        }
        catch (EndOfStreamException ex)
        {
            // The parser ran out of events inside a document (YamlDotNet also ends its input at a NUL character).
            var stop = scanner.CurrentPosition;
            throw new InventoryLoadException(path, Line(stop), Column(stop),
                "YAML ended (or holds a NUL character) inside a mapping or list opened before this point", ex);
        }
        catch (InvalidOperationException ex)
        {
            // YamlDotNet's scanner throws this without a position when a flow collection or quote runs off the
            // end of the file; where the scanner stopped is the best position there is.
            var stop = scanner.CurrentPosition;
            throw new InventoryLoadException(path, Line(stop), Column(stop),
                "YAML ended inside an unclosed '{', '[' or quote opened before this point", ex);
        }

        return rewritten?.ToString() ?? content;
    }

    /// <summary>Reads the top-level keys of one document (the mapping start already consumed) up to its end; returns the kind.</summary>
    private static string CheckKind(IParser parser, MappingStart mapping, string path, IDictionary<string, Type>? extraKinds)
    {
        Scalar? apiVersion = null;
        Scalar? kind = null;
        while (!parser.TryConsume<MappingEnd>(out _))
        {
            var key = parser.TryConsume<Scalar>(out var keyScalar) ? keyScalar.Value : null;
            if (keyScalar is null)
            {
                parser.SkipThisAndNestedEvents(); // a complex key: not ours to judge
            }

            if (key is "apiVersion" or "kind" && parser.TryConsume<Scalar>(out var value))
            {
                if (key == "apiVersion")
                {
                    apiVersion = value;
                }
                else
                {
                    kind = value;
                }
            }
            else
            {
                parser.SkipThisAndNestedEvents();
            }
        }

        if (apiVersion is null || kind is null || apiVersion.Value.Length == 0 || kind.Value.Length == 0)
        {
            throw new InventoryLoadException(path, Line(mapping.Start), Column(mapping.Start),
                $"object without {(apiVersion is null || apiVersion.Value.Length == 0 ? "apiVersion" : "kind")}: every document needs apiVersion and kind");
        }

        var typeKey = $"{apiVersion.Value}/{kind.Value}";
        if (!KnownKinds.Contains(typeKey) && extraKinds?.ContainsKey(typeKey) != true)
        {
            throw new InventoryLoadException(path, Line(kind.Start), Column(kind.Start),
                $"unknown kind '{kind.Value}' in apiVersion '{apiVersion.Value}': KubernetesClient has no type for it");
        }

        return kind.Value;
    }

    private static string Describe(YamlException ex)
    {
        // YamlDotNet wraps conversion failures; the innermost message says what was wrong with the value.
        Exception innermost = ex;
        while (innermost.InnerException is { } inner)
        {
            innermost = inner;
        }

        if (innermost == ex)
        {
            return ex.Message;
        }

        var reason = AssemblyQualification().Replace(innermost.Message, "");
        return "a value of the wrong type: " + NamespacePrefix().Replace(reason, "");
    }

    // Type names in conversion errors carry ", KubernetesClient, Version=..., PublicKeyToken=..." noise.
    [GeneratedRegex(@", [\w.]+, Version=[^\]]*")]
    private static partial Regex AssemblyQualification();

    [GeneratedRegex(@"\b(System\.Collections\.Generic\.|System\.|k8s\.Models\.)")]
    private static partial Regex NamespacePrefix();

    private static int Line(Mark mark) => (int)mark.Line;

    private static int Column(Mark mark) => (int)mark.Column;
}
