using System.Collections.Frozen;
using System.Globalization;
using k8s.Models;
using Weft.Policy.Internal;

namespace Weft.Policy;

/// <summary>
/// Validates AuthorizationPolicy and PeerAuthentication objects the way Istio's admission does and compiles them
/// into a <see cref="PolicySet"/>. Nothing here throws on bad input: every problem becomes a warning naming the object.
/// <code>
///   AuthorizationPolicy ─► valid ──────────────► matchers (CIDRs, ports, patterns parsed once)
///                        └► invalid (bad CIDR, port, action, empty field) ─► fails closed, with a warning:
///                             ALLOW: allows nothing    DENY or unknown action: denies everything it selects
///   PeerAuthentication ──► mode per scope (mesh / namespace / selector), oldest first
/// </code>
/// Why an invalid policy fails closed rather than vanishing: Istio rejects such objects at admission, so they never
/// reach a proxy; a file has no admission, and silently dropping a DENY (or the only ALLOW, which turns
/// "allow only these" into "allow all") would open exactly what its author meant to close.
/// </summary>
internal static class PolicyCompiler
{
    public static PolicySet Compile(
        IEnumerable<V1Alpha1AuthorizationPolicy> authorizationPolicies,
        IEnumerable<V1Alpha1PeerAuthentication> peerAuthentications,
        string meshRootNamespace,
        Action<string> warn)
    {
        ArgumentException.ThrowIfNullOrEmpty(meshRootNamespace);
        var policies = new List<CompiledAuthorizationPolicy>();
        var seen = new HashSet<(string, string)>();
        foreach (var policy in authorizationPolicies)
        {
            if (TryName(policy.Metadata, V1Alpha1AuthorizationPolicy.KubeKind, warn, out var ns, out var name)
                && CheckUnique(seen, V1Alpha1AuthorizationPolicy.KubeKind, ns, name, warn)
                && CompileAuthorization(policy.Spec ?? new AuthorizationPolicySpec(), ns, name, warn) is { } compiled)
            {
                policies.Add(compiled);
            }
        }

        static CompiledAuthorizationPolicy[] Ordered(IEnumerable<CompiledAuthorizationPolicy> policies) =>
            [.. policies.OrderBy(p => p.Action == PolicyAction.Deny ? 0 : 1).ThenBy(p => p.Namespace, StringComparer.Ordinal).ThenBy(p => p.Name, StringComparer.Ordinal)];

        var mesh = Ordered(policies.Where(p => p.Namespace == meshRootNamespace));
        var byNamespace = policies.Where(p => p.Namespace != meshRootNamespace)
            .GroupBy(p => p.Namespace, StringComparer.Ordinal)
            .ToFrozenDictionary(g => g.Key, g => Ordered(g), StringComparer.Ordinal);

        var modes = new List<(CompiledPeerAuthentication Policy, DateTime Created)>();
        seen.Clear();
        foreach (var peer in peerAuthentications)
        {
            if (TryName(peer.Metadata, V1Alpha1PeerAuthentication.KubeKind, warn, out var ns, out var name)
                && CheckUnique(seen, V1Alpha1PeerAuthentication.KubeKind, ns, name, warn))
            {
                modes.Add((CompilePeerAuthentication(peer.Spec, ns, name, warn), peer.Metadata?.CreationTimestamp ?? DateTime.MinValue));
            }
        }

        // Istio: when several policies share a level, the oldest wins. A file rarely has timestamps, so the name breaks ties.
        var oldestFirst = modes.OrderBy(m => m.Created).ThenBy(m => m.Policy.Name, StringComparer.Ordinal).Select(m => m.Policy).ToList();
        var meshMode = oldestFirst.FirstOrDefault(p => p.Namespace == meshRootNamespace && p.Selector is null);
        var meshWorkloadModes = oldestFirst.Where(p => p.Namespace == meshRootNamespace && p.Selector is not null).ToArray();
        var namespaceModes = oldestFirst.Where(p => p.Namespace != meshRootNamespace && p.Selector is null)
            .GroupBy(p => p.Namespace, StringComparer.Ordinal)
            .ToFrozenDictionary(g => g.Key, g => g.First(), StringComparer.Ordinal);
        var workloadModes = oldestFirst.Where(p => p.Namespace != meshRootNamespace && p.Selector is not null)
            .GroupBy(p => p.Namespace, StringComparer.Ordinal)
            .ToFrozenDictionary(g => g.Key, g => g.ToArray(), StringComparer.Ordinal);

        return new PolicySet(meshRootNamespace, mesh, byNamespace, meshMode, namespaceModes, meshWorkloadModes, workloadModes);
    }

    private static CompiledAuthorizationPolicy? CompileAuthorization(AuthorizationPolicySpec spec, string ns, string name, Action<string> warn)
    {
        var what = $"{V1Alpha1AuthorizationPolicy.KubeKind} {ns}/{name}";
        if (spec.TargetRef is not null || spec.TargetRefs is { Count: > 0 })
        {
            warn($"{what} ignored: it targets gateways (targetRef/targetRefs), and Weft has none");
            return null;
        }

        var selector = Selector(spec.Selector);
        PolicyAction? action = spec.Action switch
        {
            null or "" or "ALLOW" => PolicyAction.Allow,
            "DENY" => PolicyAction.Deny,
            _ => null,
        };

        if (spec.Action == "AUDIT")
        {
            // Istio: AUDIT policies never change whether a request is allowed; Weft has no audit sink.
            warn($"{what} ignored: action AUDIT only marks requests for an audit plugin, which Weft does not have");
            return null;
        }

        if (spec.Action == "CUSTOM")
        {
            warn($"{what}: action CUSTOM (external authorization) is not supported; connections matching its rules are denied");
            action = PolicyAction.Deny;
        }

        var notes = new List<string>();
        string? error = action is null ? $"action '{spec.Action}' is neither ALLOW nor DENY" : null;
        var rules = new List<CompiledRule>();
        for (var i = 0; error is null && i < (spec.Rules?.Count ?? 0); i++)
        {
            if (TryCompileRule(spec.Rules![i], i, action!.Value, notes, out var rule, out error))
            {
                rules.Add(rule);
            }
        }

        if (error is not null)
        {
            var failClosed = action == PolicyAction.Allow
                ? "it allows nothing until fixed"
                : "it denies every connection to the workloads it selects until fixed";
            warn($"{what} is invalid ({error}); {failClosed}");
            return action == PolicyAction.Allow
                ? new CompiledAuthorizationPolicy(ns, name, PolicyAction.Allow, selector, [])
                : new CompiledAuthorizationPolicy(ns, name, PolicyAction.Deny, selector, [CompiledRule.MatchAll]);
        }

        foreach (var note in notes)
        {
            warn($"{what}: {note}");
        }

        // Istio: "rules: If not set, the match will never occur. This is equivalent to setting a default of deny for the
        // target workloads if the action is ALLOW" (spec: {} allows nothing), while "An empty rule is always matched"
        // (rules: [{}] allows everything). security.istio.io AuthorizationPolicy reference, fields `rules` and `Rule`.
        return new CompiledAuthorizationPolicy(ns, name, action!.Value, selector, [.. rules]);
    }

    private static bool TryCompileRule(AuthorizationRule? rule, int index, PolicyAction action, List<string> notes, out CompiledRule compiled, out string? error)
    {
        compiled = CompiledRule.MatchAll;
        error = null;
        if (rule is null)
        {
            return true; // "- {}" and a bare "-" both read as the empty rule
        }

        var l7 = new List<string>();
        CompiledSource[]? from = null;
        if (rule.From is { } fromList)
        {
            if (fromList.Count == 0)
            {
                error = $"rule {index}: `from` must not be empty";
                return false;
            }

            from = new CompiledSource[fromList.Count];
            for (var i = 0; i < fromList.Count; i++)
            {
                if (fromList[i]?.Source is not { } source)
                {
                    error = $"rule {index}: `from.source` must not be empty";
                    return false;
                }

                if (!TryCompileSource(source, l7, out from[i], out error))
                {
                    error = $"rule {index}: {error}";
                    return false;
                }
            }
        }

        CompiledOperation[]? to = null;
        if (rule.To is { } toList)
        {
            if (toList.Count == 0)
            {
                error = $"rule {index}: `to` must not be empty";
                return false;
            }

            to = new CompiledOperation[toList.Count];
            for (var i = 0; i < toList.Count; i++)
            {
                if (toList[i]?.Operation is not { } operation)
                {
                    error = $"rule {index}: `to.operation` must not be empty";
                    return false;
                }

                if (!TryCompileOperation(operation, l7, out to[i], out error))
                {
                    error = $"rule {index}: {error}";
                    return false;
                }
            }
        }

        if (rule.When is { Count: > 0 })
        {
            l7.Add("when");
        }

        if (l7.Count > 0)
        {
            var fields = string.Join(", ", l7.Distinct());
            if (action == PolicyAction.Allow)
            {
                // What Istio does for an ALLOW rule on a TCP filter chain: the rule is left out, so it cannot widen access.
                notes.Add($"rule {index} uses {fields}, which an L4 proxy cannot see: this ALLOW rule never matches");
                compiled = new CompiledRule(from, to, neverMatches: true);
                return true;
            }

            // Istio: "For a DENY rule, missing attributes are treated as matches."
            notes.Add($"rule {index} uses {fields}, which an L4 proxy cannot see: this DENY rule treats them as matching");
        }

        compiled = from is null && to is null ? CompiledRule.MatchAll : new CompiledRule(from, to);
        return true;
    }

    private static bool TryCompileSource(RuleSource source, List<string> l7, out CompiledSource compiled, out string? error)
    {
        compiled = null!;
        if (IsEmpty(source.Principals) && IsEmpty(source.NotPrincipals) && IsEmpty(source.Namespaces) && IsEmpty(source.NotNamespaces)
            && IsEmpty(source.IpBlocks) && IsEmpty(source.NotIpBlocks) && IsEmpty(source.RequestPrincipals) && IsEmpty(source.NotRequestPrincipals)
            && IsEmpty(source.RemoteIpBlocks) && IsEmpty(source.NotRemoteIpBlocks))
        {
            error = "`from.source` must not be empty";
            return false;
        }

        if (!TryPatterns("principals", source.Principals, out var principals, out error)
            || !TryPatterns("notPrincipals", source.NotPrincipals, out var notPrincipals, out error)
            || !TryPatterns("namespaces", source.Namespaces, out var namespaces, out error)
            || !TryPatterns("notNamespaces", source.NotNamespaces, out var notNamespaces, out error)
            || !TryBlocks("ipBlocks", source.IpBlocks, out var ipBlocks, out error)
            || !TryBlocks("notIpBlocks", source.NotIpBlocks, out var notIpBlocks, out error)
            || !TryPatterns("requestPrincipals", source.RequestPrincipals, out _, out error)
            || !TryPatterns("notRequestPrincipals", source.NotRequestPrincipals, out _, out error)
            || !TryBlocks("remoteIpBlocks", source.RemoteIpBlocks, out _, out error)
            || !TryBlocks("notRemoteIpBlocks", source.NotRemoteIpBlocks, out _, out error))
        {
            return false;
        }

        NoteL7(l7, "requestPrincipals", source.RequestPrincipals);
        NoteL7(l7, "notRequestPrincipals", source.NotRequestPrincipals);
        NoteL7(l7, "remoteIpBlocks", source.RemoteIpBlocks);
        NoteL7(l7, "notRemoteIpBlocks", source.NotRemoteIpBlocks);
        compiled = new CompiledSource
        {
            Principals = principals,
            NotPrincipals = notPrincipals,
            Namespaces = namespaces,
            NotNamespaces = notNamespaces,
            IpBlocks = ipBlocks,
            NotIpBlocks = notIpBlocks,
        };
        return true;
    }

    private static bool TryCompileOperation(RuleOperation operation, List<string> l7, out CompiledOperation compiled, out string? error)
    {
        compiled = null!;
        if (IsEmpty(operation.Ports) && IsEmpty(operation.NotPorts) && IsEmpty(operation.Hosts) && IsEmpty(operation.NotHosts)
            && IsEmpty(operation.Methods) && IsEmpty(operation.NotMethods) && IsEmpty(operation.Paths) && IsEmpty(operation.NotPaths))
        {
            error = "`to.operation` must not be empty";
            return false;
        }

        if (!TryPorts("ports", operation.Ports, out var ports, out error)
            || !TryPorts("notPorts", operation.NotPorts, out var notPorts, out error)
            || !TryPatterns("hosts", operation.Hosts, out _, out error)
            || !TryPatterns("notHosts", operation.NotHosts, out _, out error)
            || !TryPatterns("methods", operation.Methods, out _, out error)
            || !TryPatterns("notMethods", operation.NotMethods, out _, out error)
            || !TryPatterns("paths", operation.Paths, out _, out error)
            || !TryPatterns("notPaths", operation.NotPaths, out _, out error))
        {
            return false;
        }

        NoteL7(l7, "hosts", operation.Hosts);
        NoteL7(l7, "notHosts", operation.NotHosts);
        NoteL7(l7, "methods", operation.Methods);
        NoteL7(l7, "notMethods", operation.NotMethods);
        NoteL7(l7, "paths", operation.Paths);
        NoteL7(l7, "notPaths", operation.NotPaths);
        compiled = new CompiledOperation { Ports = ports, NotPorts = notPorts };
        return true;
    }

    private static CompiledPeerAuthentication CompilePeerAuthentication(PeerAuthenticationSpec? spec, string ns, string name, Action<string> warn)
    {
        var what = $"{V1Alpha1PeerAuthentication.KubeKind} {ns}/{name}";
        if (spec?.PortLevelMtls is { Count: > 0 })
        {
            warn($"{what}: portLevelMtls is not supported and is ignored; spec.mtls.mode applies to every port");
        }

        MtlsMode? mode;
        switch (spec?.Mtls?.Mode)
        {
            case null or "" or "UNSET":
                mode = null;
                break;
            case "PERMISSIVE":
                mode = MtlsMode.Permissive;
                break;
            case "STRICT":
                mode = MtlsMode.Strict;
                break;
            case "DISABLE":
                // An ambient node proxy has no "plaintext only" inbound either: plaintext is accepted, mTLS still works.
                warn($"{what}: mode DISABLE is read as PERMISSIVE (Weft still accepts mTLS from mesh peers)");
                mode = MtlsMode.Permissive;
                break;
            default:
                warn($"{what} is invalid (mtls.mode '{spec.Mtls.Mode}' is not UNSET, PERMISSIVE, STRICT or DISABLE); it is read as STRICT until fixed");
                mode = MtlsMode.Strict;
                break;
        }

        return new CompiledPeerAuthentication(ns, name, Selector(spec?.Selector), mode);
    }

    /// <summary>An absent selector and one with no labels both select every workload in scope (the policy is namespace-wide).</summary>
    private static KeyValuePair<string, string>[]? Selector(WorkloadSelector? selector) =>
        selector?.MatchLabels is { Count: > 0 } labels ? [.. labels.OrderBy(l => l.Key, StringComparer.Ordinal)] : null;

    private static bool TryPatterns(string field, IList<string>? values, out StringPattern[]? patterns, out string? error)
    {
        patterns = null;
        error = null;
        if (IsEmpty(values))
        {
            return true;
        }

        patterns = new StringPattern[values!.Count];
        for (var i = 0; i < values.Count; i++)
        {
            if (string.IsNullOrEmpty(values[i]))
            {
                error = $"{field}: empty value not allowed";
                return false;
            }

            patterns[i] = StringPattern.Parse(values[i]);
        }

        return true;
    }

    private static bool TryBlocks(string field, IList<string>? values, out IpBlock[]? blocks, out string? error)
    {
        blocks = null;
        error = null;
        if (IsEmpty(values))
        {
            return true;
        }

        blocks = new IpBlock[values!.Count];
        for (var i = 0; i < values.Count; i++)
        {
            if (!IpBlock.TryParse(values[i]?.Trim() ?? "", out var reason, out blocks[i]))
            {
                error = $"{field}: {reason}";
                return false;
            }
        }

        return true;
    }

    private static bool TryPorts(string field, IList<string>? values, out int[]? ports, out string? error)
    {
        ports = null;
        error = null;
        if (IsEmpty(values))
        {
            return true;
        }

        ports = new int[values!.Count];
        for (var i = 0; i < values.Count; i++)
        {
            if (!int.TryParse(values[i], NumberStyles.None, CultureInfo.InvariantCulture, out ports[i]) || ports[i] is < 1 or > 65535)
            {
                error = $"{field}: '{values[i]}' is not a port number (1-65535)";
                return false;
            }
        }

        return true;
    }

    private static void NoteL7(List<string> l7, string field, IList<string>? values)
    {
        if (!IsEmpty(values))
        {
            l7.Add(field);
        }
    }

    private static bool IsEmpty(IList<string>? values) => values is null || values.Count == 0;

    private static bool TryName(V1ObjectMeta? metadata, string kind, Action<string> warn, out string ns, out string name)
    {
        // Like the rest of the inventory: an object without a namespace is read as "default".
        ns = string.IsNullOrEmpty(metadata?.NamespaceProperty) ? "default" : metadata.NamespaceProperty;
        name = metadata?.Name ?? "";
        if (name.Length == 0)
        {
            warn($"{kind} without metadata.name in namespace {ns} skipped");
            return false;
        }

        return true;
    }

    private static bool CheckUnique(HashSet<(string, string)> seen, string kind, string ns, string name, Action<string> warn)
    {
        if (seen.Add((ns, name)))
        {
            return true;
        }

        warn($"{kind} {ns}/{name} appears twice; the second one is ignored");
        return false;
    }
}
