using System.Reflection;
using System.Reflection.Emit;
using System.Text;
using Xunit.Abstractions;

namespace Weft.Tests.Architecture;

/// <summary>
/// The agent's namespaces (Weft.Capture, Weft.Inventory, ...; an .Internal namespace counts as its parent) depend on
/// each other one way only. The graph comes from the compiled agent, not from its source text, so a `using` line that
/// is missing (global usings, fully qualified names) or left over cannot fool it: each type's base type, interfaces,
/// fields, properties, method and constructor signatures, locals, and every type and member its method bodies' IL
/// names (calls, field accesses, casts, typeof, object creation), lambdas and async state machines included.
/// </summary>
public class NamespaceCycleTests(ITestOutputHelper output)
{
    private static readonly Assembly Agent = typeof(Weft.Inventory.InventorySnapshot).Assembly;

    [Fact]
    public void AgentNamespaces_HaveNoDependencyCycle()
    {
        var graph = DependencyGraph(Agent);
        var cycles = Cycles(graph);
        output.WriteLine(Describe(graph));
        Assert.True(cycles.Count == 0, $"namespace cycles: {string.Join("; ", cycles.Select(c => string.Join(" <-> ", c)))}\n{Describe(graph)}");
    }

    [Fact]
    public void DependencyGraph_SeesReferencesFromSignaturesAndFromMethodBodies()
    {
        var graph = DependencyGraph(Agent);

        // The proxy calls the inventory's Authorizer and holds snapshots: both the reading and the graph must see that,
        // or a cycle-free answer would mean nothing.
        Assert.Contains("Inventory", graph["Proxy"]);
        Assert.Contains("Policy", graph["Inventory"]);
        Assert.DoesNotContain("Inventory", graph["Policy"]);
        Assert.True(graph.Count >= 10, Describe(graph));
    }

    [Fact]
    public void Inventory_HoldsWhatTheClusterSays_AndReachesNoNodeLocalCapture()
    {
        // Issue 9: finding a pod's netns from its cgroup is the node's business (Weft.Node.LocalNetns), not the cluster model's.
        var graph = DependencyGraph(Agent);
        Assert.DoesNotContain("Capture", graph["Inventory"]);
        Assert.Contains("Capture", graph["Node"]);
    }

    [Fact]
    public void CycleFinder_ReportsEachStronglyConnectedGroupOnce()
    {
        var graph = new SortedDictionary<string, SortedSet<string>>(StringComparer.Ordinal)
        {
            ["A"] = ["B"],
            ["B"] = ["C"],
            ["C"] = ["A", "D"],
            ["D"] = [],
            ["E"] = ["F"],
            ["F"] = ["E"],
        };

        var cycles = Cycles(graph);

        Assert.Equal(["A B C", "E F"], cycles.Select(c => string.Join(' ', c)).Order(StringComparer.Ordinal));
        Assert.Empty(Cycles(new SortedDictionary<string, SortedSet<string>>(StringComparer.Ordinal) { ["A"] = ["B"], ["B"] = [] }));
    }

    /// <summary>Namespace (without "Weft.") to the namespaces it refers to; the root namespace "Weft" is named "Weft".</summary>
    private static SortedDictionary<string, SortedSet<string>> DependencyGraph(Assembly assembly)
    {
        var graph = new SortedDictionary<string, SortedSet<string>>(StringComparer.Ordinal);
        foreach (var type in assembly.GetTypes())
        {
            if (Area(type) is not { } from)
            {
                continue;
            }

            var edges = graph.TryGetValue(from, out var known) ? known : graph[from] = new SortedSet<string>(StringComparer.Ordinal);
            foreach (var referenced in ReferencedTypes(type))
            {
                if (Area(referenced) is { } to && to != from)
                {
                    edges.Add(to);
                }
            }
        }

        return graph;
    }

    private static string? Area(Type type)
    {
        while (type.IsArray || type.IsByRef || type.IsPointer)
        {
            type = type.GetElementType()!;
        }

        var ns = type.Namespace;
        if (ns is null || type.Assembly != Agent)
        {
            return null;
        }

        if (ns == "Weft")
        {
            return "Weft";
        }

        return ns.StartsWith("Weft.", StringComparison.Ordinal) ? ns["Weft.".Length..].Split('.')[0] : null;
    }

    private static IEnumerable<Type> ReferencedTypes(Type type)
    {
        const BindingFlags All = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        var found = new List<Type>();
        if (type.BaseType is { } baseType)
        {
            found.Add(baseType);
        }

        found.AddRange(type.GetInterfaces());
        found.AddRange(type.GetFields(All).Select(f => f.FieldType));
        found.AddRange(type.GetProperties(All).Select(p => p.PropertyType));
        foreach (var method in type.GetMethods(All).Cast<MethodBase>().Concat(type.GetConstructors(All)))
        {
            if (method is MethodInfo info)
            {
                found.Add(info.ReturnType);
            }

            found.AddRange(method.GetParameters().Select(p => p.ParameterType));
            found.AddRange(BodyReferences(type, method));
        }

        return found.SelectMany(Expand);
    }

    /// <summary>A type with its generic arguments and element types, so List&lt;Workload&gt; counts as Inventory.</summary>
    private static IEnumerable<Type> Expand(Type type)
    {
        yield return type;
        if (type.HasElementType)
        {
            foreach (var inner in Expand(type.GetElementType()!))
            {
                yield return inner;
            }
        }

        if (type.IsGenericType)
        {
            foreach (var argument in type.GetGenericArguments().Where(a => !a.IsGenericParameter).SelectMany(Expand))
            {
                yield return argument;
            }
        }
    }

    private static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    /// <summary>Types and members' declaring types named by the method body's IL, plus the types of its locals.</summary>
    private static IEnumerable<Type> BodyReferences(Type type, MethodBase method)
    {
        var body = method.GetMethodBody();
        if (body is null)
        {
            return [];
        }

        var found = body.LocalVariables.Select(l => l.LocalType).ToList();
        var il = body.GetILAsByteArray() ?? [];
        var typeArguments = type.IsGenericType ? type.GetGenericArguments() : null;
        var methodArguments = method.IsGenericMethod ? method.GetGenericArguments() : null;
        var at = 0;
        while (at < il.Length)
        {
            short value = il[at++];
            if (value == 0xFE)
            {
                value = (short)(0xFE00 | il[at++]);
            }

            var opCode = OpCodesByValue[value];
            var operandSize = opCode.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + (4 * BitConverter.ToInt32(il, at)),
                _ => 4,
            };
            if (opCode.OperandType is OperandType.InlineField or OperandType.InlineMethod or OperandType.InlineTok or OperandType.InlineType)
            {
                var token = BitConverter.ToInt32(il, at);
                var member = method.Module.ResolveMember(token, typeArguments, methodArguments);
                switch (member)
                {
                    case Type named:
                        found.Add(named);
                        break;
                    case FieldInfo field:
                        found.Add(field.DeclaringType!);
                        found.Add(field.FieldType);
                        break;
                    case MethodBase called:
                        found.Add(called.DeclaringType!);
                        if (called is MethodInfo calledInfo)
                        {
                            found.Add(calledInfo.ReturnType);
                            found.AddRange(calledInfo.GetGenericArguments().Where(a => !a.IsGenericParameter));
                        }

                        break;
                }
            }

            at += operandSize;
        }

        return found.Where(t => t is not null && !t.IsGenericParameter);
    }

    /// <summary>Each group of two or more namespaces that reach one another (Tarjan's strongly connected components), sorted.</summary>
    private static List<string[]> Cycles(SortedDictionary<string, SortedSet<string>> graph)
    {
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        var low = new Dictionary<string, int>(StringComparer.Ordinal);
        var stack = new Stack<string>();
        var onStack = new HashSet<string>(StringComparer.Ordinal);
        var cycles = new List<string[]>();
        var next = 0;

        void Visit(string node)
        {
            index[node] = low[node] = next++;
            stack.Push(node);
            onStack.Add(node);
            foreach (var to in graph.TryGetValue(node, out var edges) ? edges : [])
            {
                if (!index.ContainsKey(to))
                {
                    Visit(to);
                    low[node] = Math.Min(low[node], low[to]);
                }
                else if (onStack.Contains(to))
                {
                    low[node] = Math.Min(low[node], index[to]);
                }
            }

            if (low[node] == index[node])
            {
                var component = new List<string>();
                string member;
                do
                {
                    member = stack.Pop();
                    onStack.Remove(member);
                    component.Add(member);
                }
                while (member != node);

                if (component.Count > 1)
                {
                    cycles.Add([.. component.Order(StringComparer.Ordinal)]);
                }
            }
        }

        foreach (var node in graph.Keys)
        {
            if (!index.ContainsKey(node))
            {
                Visit(node);
            }
        }

        return cycles;
    }

    private static string Describe(SortedDictionary<string, SortedSet<string>> graph)
    {
        var text = new StringBuilder("dependency graph of the agent's namespaces:\n");
        foreach (var (from, to) in graph)
        {
            text.Append("  ").Append(from).Append(" -> ").AppendJoin(' ', to).Append('\n');
        }

        return text.ToString();
    }
}
