using System.Collections.Immutable;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using k8s;
using k8s.Models;
using Weft.Policy;

namespace Weft.Inventory;

/// <summary>
/// The cluster as compact per-object state, changed one object at a time, from which each
/// <see cref="Snapshot"/> is made by sharing every unchanged part of the previous one. A change costs work
/// proportional to what it touches (the object, the Service its slice belongs to, the pods of a namespace whose
/// enrollment flips, the policies when a policy changes), never to the size of the cluster.
/// <code>
///   Upsert(id, object) / Remove(kind, id)
///      └─► parse the one object (validate, intern) ─► same as before? nothing
///            └─► resolve what depends on it: the pods sharing its name or an address (first by ordinal wins),
///                the Service and its slices, the namespace's pods, the VIPs the Service claims
///                  └─► persistent maps (path copies, the rest shared) ─► Snapshot(): O(1) freeze
/// </code>
/// Conflicts (two pods with one IP, an object twice) resolve as a from-scratch build of the objects in the
/// order they first arrived would: the earlier object wins. Single writer: callers serialize Upsert, Remove
/// and Snapshot; published snapshots are immutable and read without locks.
/// </summary>
internal sealed class InventoryState
{
    private readonly string _meshRootNamespace;
    private InternPool _pool = new();
    private long _nextOrdinal;

    private readonly Dictionary<string, NamespaceEntry> _namespaceEntries = new(StringComparer.Ordinal);
    // Keyed by the uid as 16 bytes (Kubernetes) or the file's namespace/name: one key per pod in the cluster.
    private readonly Dictionary<CompactId, PodEntry> _podEntries = [];
    private readonly Dictionary<string, ServiceEntry> _serviceEntries = new(StringComparer.Ordinal);
    private readonly Dictionary<string, SliceEntry> _sliceEntries = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (long Ordinal, V1Alpha1AuthorizationPolicy Policy, string Json)> _authorizationPolicies = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (long Ordinal, V1Alpha1PeerAuthentication Policy, string Json)> _peerAuthentications = new(StringComparer.Ordinal);

    // Who claims a name or an address: the earliest valid claimant wins, the rest are warned about.
    private readonly Claims<string, NamespaceEntry> _namespaceClaims = new(StringComparer.Ordinal);
    private readonly Claims<(string, string), PodEntry> _podNameClaims = new();

    // Pods waiting for an address another pod holds (or new, not yet resolved). The holder is not listed: the data
    // path's own map finds it (CopyAddressClaimants), so the common pod costs no entry here.
    private readonly Claims<IPAddress, PodEntry> _waitingAddressClaims = new();
    private readonly Dictionary<string, HashSet<PodEntry>> _podsFollowingNamespace = new(StringComparer.Ordinal);
    private readonly Claims<(string, string), ServiceEntry> _serviceClaims = new();
    private readonly Claims<(string, string), SliceEntry> _slicesByService = new();

    // A Service's own targets, one per VIP and port (almost always one or two): an array, not a map per Service.
    private readonly Dictionary<(string, string), ServiceTarget[]> _targetsOfService = [];
    private readonly Dictionary<IPEndPoint, List<(string, string)>> _vipClaims = [];
    private readonly Dictionary<IPAddress, int> _nodeAddressUses = [];

    // What the snapshots share: persistent maps whose builders copy only the path to a changed entry.
    private readonly ImmutableSortedDictionary<string, MeshNamespace>.Builder _namespaces =
        ImmutableSortedDictionary.CreateBuilder<string, MeshNamespace>(StringComparer.Ordinal);
    private readonly ImmutableSortedDictionary<(string, string), Workload>.Builder _workloads =
        ImmutableSortedDictionary.CreateBuilder<(string, string), Workload>(NameComparer.Instance);
    private readonly ImmutableDictionary<IPAddress, Workload>.Builder _workloadsByIp = ImmutableDictionary.CreateBuilder<IPAddress, Workload>();
    private readonly ImmutableHashSet<IPAddress>.Builder _nodeAddresses = ImmutableHashSet.CreateBuilder<IPAddress>();
    private readonly ImmutableDictionary<string, ImmutableArray<Workload>>.Builder _enrolledByNode =
        ImmutableDictionary.CreateBuilder<string, ImmutableArray<Workload>>(StringComparer.Ordinal);
    private readonly ImmutableSortedDictionary<(string, string), Service>.Builder _services =
        ImmutableSortedDictionary.CreateBuilder<(string, string), Service>(NameComparer.Instance);
    private readonly ImmutableDictionary<IPEndPoint, ServiceTarget>.Builder _targets = ImmutableDictionary.CreateBuilder<IPEndPoint, ServiceTarget>();
    private readonly ImmutableSortedDictionary<long, ImmutableArray<string>>.Builder _warnings = ImmutableSortedDictionary.CreateBuilder<long, ImmutableArray<string>>();

    private PolicySet _policies = PolicySet.Empty;
    private ImmutableArray<string> _policyWarnings = [];
    private bool _policiesDirty;
    private InventorySnapshot? _lastSnapshot;

    public InventoryState(string meshRootNamespace)
    {
        ArgumentException.ThrowIfNullOrEmpty(meshRootNamespace);
        _meshRootNamespace = meshRootNamespace;
    }

    /// <summary>Objects held, of every kind the inventory uses.</summary>
    public int ObjectCount => _namespaceEntries.Count + _podEntries.Count + _serviceEntries.Count + _sliceEntries.Count
        + _authorizationPolicies.Count + _peerAuthentications.Count;

    /// <summary>Whether anything the next snapshot shows changed since the last one.</summary>
    public bool HasChanges => _lastSnapshot is null || _policiesDirty;

    /// <summary>
    /// Adds or replaces the object with this id (ids are per kind: a uid, or a name for the file). A replaced
    /// object keeps its place in the order conflicts are resolved by. An object equal to the held one changes nothing.
    /// </summary>
    public void Upsert(string id, IKubernetesObject obj)
    {
        ArgumentNullException.ThrowIfNull(id);
        switch (obj)
        {
            case V1Namespace ns:
                {
                    var old = _namespaceEntries.GetValueOrDefault(id);
                    var entry = ParseNamespace(ns, old?.Ordinal ?? _nextOrdinal++);
                    if (old is not null && old.SameAs(entry))
                    {
                        return;
                    }

                    RemoveNamespace(id);
                    AddNamespace(id, entry);
                    break;
                }

            case V1Pod pod:
                {
                    var podId = CompactId.Of(id);
                    var old = _podEntries.GetValueOrDefault(podId);
                    var entry = ParsePod(pod, old?.Ordinal ?? _nextOrdinal++);
                    if (old is not null && old.SameAs(entry))
                    {
                        return;
                    }

                    var neighbours = RemovePod(podId);
                    AddPod(podId, entry, neighbours);
                    break;
                }

            case V1Service service:
                {
                    var old = _serviceEntries.GetValueOrDefault(id);
                    var entry = ParseService(service, old?.Ordinal ?? _nextOrdinal++);
                    if (old is not null && old.SameAs(entry))
                    {
                        return;
                    }

                    RemoveService(id);
                    AddService(id, entry);
                    break;
                }

            case V1EndpointSlice slice:
                {
                    var old = _sliceEntries.GetValueOrDefault(id);
                    var entry = ParseSlice(slice, old?.Ordinal ?? _nextOrdinal++);
                    if (old is not null && old.SameAs(entry))
                    {
                        return;
                    }

                    RemoveSlice(id);
                    AddSlice(id, entry);
                    break;
                }

            case V1Alpha1AuthorizationPolicy policy:
                UpsertPolicy(_authorizationPolicies, id, policy);
                break;
            case V1Alpha1PeerAuthentication peerAuthentication:
                UpsertPolicy(_peerAuthentications, id, peerAuthentication);
                break;
            case null:
                break;
            default:
                Log.Debug("inventory", $"ignoring {InventoryBuilder.Describe(obj)}: the inventory does not use this kind yet");
                break;
        }

        KeepPoolBounded();
    }

    /// <summary>Removes the object of this kind (its model type) and id; an unknown id changes nothing.</summary>
    public void Remove(Type kind, string id)
    {
        ArgumentNullException.ThrowIfNull(kind);
        ArgumentNullException.ThrowIfNull(id);
        if (kind == typeof(V1Namespace))
        {
            RemoveNamespace(id);
        }
        else if (kind == typeof(V1Pod))
        {
            var podId = CompactId.Of(id);
            if (_podEntries.ContainsKey(podId))
            {
                Resolve(RemovePod(podId));
            }
        }
        else if (kind == typeof(V1Service))
        {
            RemoveService(id);
        }
        else if (kind == typeof(V1EndpointSlice))
        {
            RemoveSlice(id);
        }
        else if (kind == typeof(V1Alpha1AuthorizationPolicy))
        {
            _policiesDirty |= _authorizationPolicies.Remove(id);
        }
        else if (kind == typeof(V1Alpha1PeerAuthentication))
        {
            _policiesDirty |= _peerAuthentications.Remove(id);
        }
    }

    /// <summary>Removes every object whose kind and id are not in <paramref name="keep"/> (the file source: objects gone from the file).</summary>
    public void RemoveAllExcept(IReadOnlySet<(Type, string)> keep)
    {
        ArgumentNullException.ThrowIfNull(keep);
        RemoveMissing(typeof(V1Namespace), _namespaceEntries.Keys);
        RemoveMissing(typeof(V1Pod), _podEntries.Keys.Select(id => id.Text!));
        RemoveMissing(typeof(V1Service), _serviceEntries.Keys);
        RemoveMissing(typeof(V1EndpointSlice), _sliceEntries.Keys);
        RemoveMissing(typeof(V1Alpha1AuthorizationPolicy), _authorizationPolicies.Keys);
        RemoveMissing(typeof(V1Alpha1PeerAuthentication), _peerAuthentications.Keys);

        void RemoveMissing(Type kind, IEnumerable<string> ids)
        {
            foreach (var id in ids.Where(id => !keep.Contains((kind, id))).ToList())
            {
                Remove(kind, id);
            }
        }
    }

    /// <summary>Removes every object of this kind (its model type) whose id is not in <paramref name="keep"/> (a full list of the kind).</summary>
    public void RemoveAllExcept(Type kind, IReadOnlySet<string> keep)
    {
        ArgumentNullException.ThrowIfNull(kind);
        ArgumentNullException.ThrowIfNull(keep);
        IEnumerable<string> ids = kind == typeof(V1Namespace) ? _namespaceEntries.Keys
            : kind == typeof(V1Pod) ? _podEntries.Keys.Select(id => id.Text!)
            : kind == typeof(V1Service) ? _serviceEntries.Keys
            : kind == typeof(V1EndpointSlice) ? _sliceEntries.Keys
            : kind == typeof(V1Alpha1AuthorizationPolicy) ? _authorizationPolicies.Keys
            : kind == typeof(V1Alpha1PeerAuthentication) ? _peerAuthentications.Keys
            : [];
        foreach (var id in ids.Where(id => !keep.Contains(id)).ToList())
        {
            Remove(kind, id);
        }
    }

    /// <summary>Whether the object equals the one held under this id (the file source's diff: nothing to do for it).</summary>
    public bool Holds(string id, IKubernetesObject obj) => obj switch
    {
        V1Namespace ns => _namespaceEntries.TryGetValue(id, out var old) && old.SameAs(ParseNamespace(ns, old.Ordinal)),
        V1Pod pod => _podEntries.TryGetValue(CompactId.Of(id), out var old) && old.SameAs(ParsePod(pod, old.Ordinal)),
        V1Service service => _serviceEntries.TryGetValue(id, out var old) && old.SameAs(ParseService(service, old.Ordinal)),
        V1EndpointSlice slice => _sliceEntries.TryGetValue(id, out var old) && old.SameAs(ParseSlice(slice, old.Ordinal)),
        V1Alpha1AuthorizationPolicy policy => _authorizationPolicies.TryGetValue(id, out var old) && old.Json == KubernetesJson.Serialize(policy),
        V1Alpha1PeerAuthentication peer => _peerAuthentications.TryGetValue(id, out var old) && old.Json == KubernetesJson.Serialize(peer),
        _ => true,
    };

    /// <summary>
    /// An immutable snapshot (version 0, for <see cref="InventoryStore.Publish"/>) of the state as it is now. Costs
    /// the changes since the previous one (and the policies, when one changed), not the size of the cluster.
    /// </summary>
    public InventorySnapshot Snapshot()
    {
        if (_policiesDirty)
        {
            var warnings = new List<string>();
            _policies = PolicyCompiler.Compile(
                _authorizationPolicies.Values.OrderBy(p => p.Ordinal).Select(p => p.Policy),
                _peerAuthentications.Values.OrderBy(p => p.Ordinal).Select(p => p.Policy),
                _meshRootNamespace,
                warnings.Add);
            _policyWarnings = [.. warnings];
            _policiesDirty = false;
            _lastSnapshot = null;
        }

        return _lastSnapshot ??= InventorySnapshot.FromState(
            _namespaces.ToImmutable(),
            _workloads.ToImmutable(),
            _workloadsByIp.ToImmutable(),
            _nodeAddresses.ToImmutable(),
            _enrolledByNode.ToImmutable(),
            _services.ToImmutable(),
            _targets.ToImmutable(),
            _warnings.ToImmutable(),
            _policyWarnings,
            _policies);
    }

    private void Changed() => _lastSnapshot = null;

    private void KeepPoolBounded()
    {
        // Names of deleted pods stay in the pool; a fresh one loses only the sharing with objects already parsed.
        if (_pool.Count > (8 * ObjectCount) + 100_000)
        {
            _pool = new InternPool();
        }
    }

    private void SetWarnings(long ordinal, ImmutableArray<string> old, ImmutableArray<string> warnings)
    {
        if (old.IsDefaultOrEmpty && warnings.IsDefaultOrEmpty)
        {
            return;
        }

        if (!old.IsDefaultOrEmpty && !warnings.IsDefaultOrEmpty && old.SequenceEqual(warnings))
        {
            return;
        }

        if (warnings.IsDefaultOrEmpty)
        {
            _warnings.Remove(ordinal);
        }
        else
        {
            _warnings[ordinal] = warnings;
        }

        Changed();
    }

    // ---------------------------------------------------------------- namespaces

    private NamespaceEntry ParseNamespace(V1Namespace ns, long ordinal)
    {
        var name = ns.Metadata?.Name;
        if (string.IsNullOrEmpty(name))
        {
            return new NamespaceEntry(ordinal, null, null, "Namespace without metadata.name skipped");
        }

        name = _pool.String(name);
        var labels = _pool.Labels(ns.Metadata?.Labels);
        return new NamespaceEntry(ordinal, name, new MeshNamespace(name, labels,
            labels.TryGetValue(InventoryBuilder.MeshLabel, out var mesh) && mesh == "enabled"), null);
    }

    private void AddNamespace(string id, NamespaceEntry entry)
    {
        _namespaceEntries[id] = entry;
        if (entry.Name is null)
        {
            SetWarnings(entry.Ordinal, [], [entry.Warning!]);
            return;
        }

        _namespaceClaims.Add(entry.Name, entry);
        ResolveNamespace(entry.Name);
    }

    private void RemoveNamespace(string id)
    {
        if (!_namespaceEntries.Remove(id, out var entry))
        {
            return;
        }

        SetWarnings(entry.Ordinal, entry.Warnings, []);
        if (entry.Name is not null)
        {
            _namespaceClaims.Remove(entry.Name, entry);
            ResolveNamespace(entry.Name);
        }
    }

    private void ResolveNamespace(string name)
    {
        var winner = _namespaceClaims.Entries(name).FirstOrDefault();
        foreach (var claimant in _namespaceClaims.Entries(name))
        {
            var warnings = claimant == winner ? [] : ImmutableArray.Create($"Namespace {name} appears twice; the second one is ignored");
            SetWarnings(claimant.Ordinal, claimant.Warnings, warnings);
            claimant.Warnings = warnings;
        }

        var old = _namespaces.GetValueOrDefault(name);
        var current = winner?.Value;
        if (ReferenceEquals(old, current))
        {
            return;
        }

        if (current is null)
        {
            _namespaces.Remove(name);
        }
        else
        {
            _namespaces[name] = current;
        }

        Changed();
        if ((old?.Enrolled ?? false) != (current?.Enrolled ?? false))
        {
            // Only pods without their own weft.dev/mesh label follow the namespace.
            foreach (var pod in _podsFollowingNamespace.GetValueOrDefault(name) ?? [])
            {
                var enrolled = current?.Enrolled ?? false;
                if (pod.Candidate is { } candidate && candidate.Enrolled != enrolled)
                {
                    var replaced = candidate with { Enrolled = enrolled };
                    if (pod.Accepted)
                    {
                        Unpublish(candidate);
                        Publish(replaced);
                    }

                    pod.Candidate = replaced;
                }
            }
        }
    }

    private bool NamespaceEnrolled(string ns) => _namespaces.TryGetValue(ns, out var meshNamespace) && meshNamespace.Enrolled;

    // ---------------------------------------------------------------- pods

    private PodEntry ParsePod(V1Pod pod, long ordinal)
    {
        if (!InventoryBuilder.TryName(pod.Metadata, "Pod", out var ns, out var name, out var nameless))
        {
            return new PodEntry(ordinal) { Warning = nameless };
        }

        var what = $"Pod {ns}/{name}";
        if (pod.Status?.Phase is "Succeeded" or "Failed")
        {
            // A finished pod's IP may already belong to a new pod.
            Log.Debug("inventory", $"ignoring {what}: phase {pod.Status.Phase}");
            return new PodEntry(ordinal);
        }

        var key = (_pool.String(ns), _pool.String(name));
        var ipTexts = pod.Status?.PodIPs is { Count: > 0 } podIps
            ? podIps.Select(p => p?.Ip).ToList()
            : [pod.Status?.PodIP];
        ipTexts.RemoveAll(string.IsNullOrWhiteSpace);
        if (ipTexts.Count == 0)
        {
            return new PodEntry(ordinal) { Key = key, Warning = $"{what} skipped: it has no IP (status.podIPs and status.podIP are empty)" };
        }

        var addresses = ImmutableArray.CreateBuilder<IPAddress>();
        foreach (var text in ipTexts)
        {
            if (!InventoryBuilder.TryParseAddress(text, out var address))
            {
                return new PodEntry(ordinal) { Key = key, Warning = $"{what} skipped: pod IP '{text}' is not an IPv4 or IPv6 address" };
            }

            if (!addresses.Contains(address))
            {
                addresses.Add(_pool.Address(address));
            }
        }

        var hostNetwork = pod.Spec?.HostNetwork == true;
        var labels = _pool.Labels(pod.Metadata?.Labels);
        var annotations = pod.Metadata?.Annotations;
        bool? meshChoice = null;
        string? meshLabelWarning = null;
        if (labels.TryGetValue(InventoryBuilder.MeshLabel, out var podChoice))
        {
            meshChoice = podChoice switch { "enabled" => true, "disabled" => false, _ => null };
            if (meshChoice is null)
            {
                meshLabelWarning = $"{what}: label {InventoryBuilder.MeshLabel}='{podChoice}' is neither 'enabled' nor 'disabled'; the namespace decides";
            }
        }

        var failOpen = false;
        string? failOpenWarning = null;
        if (annotations?.TryGetValue(InventoryBuilder.FailOpenAnnotation, out var failOpenText) == true && failOpenText is not null
            && !bool.TryParse(failOpenText.Trim(), out failOpen))
        {
            failOpenWarning = $"{what}: annotation {InventoryBuilder.FailOpenAnnotation}='{failOpenText}' is neither 'true' nor 'false'; it fails closed";
        }

        var workload = new Workload
        {
            Name = key.Item2,
            Namespace = key.Item1,
            ServiceAccount = string.IsNullOrEmpty(pod.Spec?.ServiceAccountName) ? "default" : _pool.String(pod.Spec.ServiceAccountName),
            NodeName = string.IsNullOrEmpty(pod.Spec?.NodeName) ? null : _pool.String(pod.Spec.NodeName),
            Addresses = addresses.Count == 1 ? _pool.SingleAddress(addresses[0]) : addresses.ToImmutable(),
            Labels = labels,
            NetnsPath = annotations?.TryGetValue(InventoryBuilder.NetnsAnnotation, out var netns) == true && !string.IsNullOrWhiteSpace(netns) ? netns : null,
            Uid = string.IsNullOrEmpty(pod.Metadata?.Uid) ? null : pod.Metadata.Uid,
            QosClass = _pool.OptionalString(pod.Status?.QosClass),
            Phase = _pool.OptionalString(pod.Status?.Phase),
            FailOpen = failOpen,
            Enrolled = !hostNetwork && (meshChoice ?? NamespaceEnrolled(key.Item1)),
            HostNetwork = hostNetwork,
            HostAddresses = _pool.Addresses(InventoryBuilder.HostAddresses(pod)),
        };

        // The order of the original single-pass build: the fail-open warning, then the mesh label's.
        var warnings = ImmutableArray.CreateBuilder<string>();
        if (failOpenWarning is not null)
        {
            warnings.Add(failOpenWarning);
        }

        if (meshLabelWarning is not null && !hostNetwork)
        {
            warnings.Add(meshLabelWarning);
        }

        return new PodEntry(ordinal)
        {
            Candidate = workload,
            FollowsNamespace = !hostNetwork && meshChoice is null,
            AcceptedWarnings = warnings.ToImmutable(),
        };
    }

    /// <summary>Adds the entry and resolves it with every pod that shared a name or an address with it (old or new).</summary>
    private void AddPod(CompactId id, PodEntry entry, List<PodEntry> neighbours)
    {
        _podEntries[id] = entry;
        if (entry.Key is { } key)
        {
            _podNameClaims.Add(key, entry);
            if (entry.Candidate is { HostNetwork: false } candidate)
            {
                foreach (var address in candidate.Addresses)
                {
                    _waitingAddressClaims.Add(address, entry);
                }
            }

            if (entry.FollowsNamespace)
            {
                if (!_podsFollowingNamespace.TryGetValue(key.Item1, out var pods))
                {
                    _podsFollowingNamespace[key.Item1] = pods = [];
                }

                pods.Add(entry);
            }
        }

        neighbours.Add(entry);
        Resolve(neighbours);
    }

    /// <summary>Removes the entry and returns the pods that shared a name or an address with it, to be resolved again.</summary>
    private List<PodEntry> RemovePod(CompactId id)
    {
        var neighbours = new List<PodEntry>();
        if (!_podEntries.Remove(id, out var entry))
        {
            return neighbours;
        }

        if (entry.Accepted)
        {
            Unpublish(entry.Candidate!);
            entry.Accepted = false;
        }

        SetWarnings(entry.Ordinal, entry.Warnings, []);
        if (entry.Key is { } key)
        {
            _podNameClaims.Remove(key, entry);
            _podNameClaims.CopyTo(key, neighbours);
            if (entry.Candidate is { HostNetwork: false } candidate)
            {
                foreach (var address in candidate.Addresses)
                {
                    _waitingAddressClaims.Remove(address, entry);
                    CopyAddressClaimants(address, neighbours);
                }
            }

            if (entry.FollowsNamespace && _podsFollowingNamespace.TryGetValue(key.Item1, out var pods))
            {
                pods.Remove(entry);
                if (pods.Count == 0)
                {
                    _podsFollowingNamespace.Remove(key.Item1);
                }
            }
        }

        return neighbours;
    }

    /// <summary>
    /// Decides again, in ordinal order, which of these pods (and every pod linked to them by a shared name or
    /// address) are workloads: the same greedy rule as one pass over all pods, restricted to the only pods whose
    /// outcome can have changed.
    /// </summary>
    private void Resolve(List<PodEntry> seeds)
    {
        if (seeds.Count == 0)
        {
            return;
        }

        var component = new HashSet<PodEntry>();
        var pending = new List<PodEntry>(seeds);
        while (pending.Count > 0)
        {
            var entry = pending[^1];
            pending.RemoveAt(pending.Count - 1);
            if (!component.Add(entry) || entry.Key is not { } key)
            {
                continue;
            }

            _podNameClaims.CopyTo(key, pending);

            if (entry.Candidate is { HostNetwork: false } candidate)
            {
                foreach (var address in candidate.Addresses)
                {
                    CopyAddressClaimants(address, pending);
                }
            }
        }

        var names = new HashSet<(string, string)>();
        var owners = new Dictionary<IPAddress, Workload>();
        var changes = new List<(PodEntry Entry, bool Accepted)>();
        foreach (var entry in component.OrderBy(e => e.Ordinal))
        {
            var accepted = false;
            ImmutableArray<string> warnings = [];
            if (entry.Key is not { } key)
            {
                warnings = entry.Warning is null ? [] : [entry.Warning];
            }
            else if (!names.Add(key))
            {
                warnings = [$"Pod {key.Item1}/{key.Item2} appears twice; the second one is ignored"];
            }
            else if (entry.Candidate is not { } candidate)
            {
                warnings = [entry.Warning!];
            }
            else if (!candidate.HostNetwork && candidate.Addresses.FirstOrDefault(owners.ContainsKey) is { } taken)
            {
                warnings = [$"Pod {key.Item1}/{key.Item2} skipped: its IP {taken} already belongs to Pod {owners[taken]}"];
            }
            else
            {
                accepted = true;
                warnings = entry.AcceptedWarnings;
                if (!candidate.HostNetwork)
                {
                    foreach (var address in candidate.Addresses)
                    {
                        owners[address] = candidate;
                    }
                }
            }

            SetWarnings(entry.Ordinal, entry.Warnings, warnings);
            entry.Warnings = warnings;
            if (accepted != entry.Accepted)
            {
                changes.Add((entry, accepted));
            }
        }

        // Losers first: a winner may take over the address or name a loser held.
        foreach (var (entry, accepted) in changes.Where(c => !c.Accepted))
        {
            Unpublish(entry.Candidate!);
            entry.Accepted = false;
            WaitForAddresses(entry, waiting: true);
        }

        foreach (var (entry, accepted) in changes.Where(c => c.Accepted))
        {
            Publish(entry.Candidate!);
            entry.Accepted = true;
            WaitForAddresses(entry, waiting: false);
        }
    }

    /// <summary>The pods claiming an address: the one holding it (found through the data path's map, by its name) and those waiting for it.</summary>
    private void CopyAddressClaimants(IPAddress address, List<PodEntry> target)
    {
        if (_workloadsByIp.TryGetValue(address, out var holder)
            && _podNameClaims.Entries((holder.Namespace, holder.Name)).FirstOrDefault(e => e.Accepted) is { } entry)
        {
            target.Add(entry);
        }

        _waitingAddressClaims.CopyTo(address, target);
    }

    private void WaitForAddresses(PodEntry entry, bool waiting)
    {
        if (entry.Candidate is { HostNetwork: false } candidate)
        {
            foreach (var address in candidate.Addresses)
            {
                if (waiting)
                {
                    _waitingAddressClaims.Add(address, entry);
                }
                else
                {
                    _waitingAddressClaims.Remove(address, entry);
                }
            }
        }
    }

    private void Publish(Workload workload)
    {
        _workloads[(workload.Namespace, workload.Name)] = workload;
        if (!workload.HostNetwork)
        {
            foreach (var address in workload.Addresses)
            {
                _workloadsByIp[address] = workload;
            }
        }
        else
        {
            UseNodeAddresses(workload.Addresses, +1);
        }

        UseNodeAddresses(workload.HostAddresses, +1);
        if (workload.Enrolled && workload.NodeName is { } node)
        {
            var local = _enrolledByNode.GetValueOrDefault(node, []);
            var index = 0;
            while (index < local.Length && NameComparer.Instance.Compare((local[index].Namespace, local[index].Name), (workload.Namespace, workload.Name)) < 0)
            {
                index++;
            }

            _enrolledByNode[node] = local.Insert(index, workload);
        }

        Changed();
    }

    private void Unpublish(Workload workload)
    {
        _workloads.Remove((workload.Namespace, workload.Name));
        if (!workload.HostNetwork)
        {
            foreach (var address in workload.Addresses)
            {
                if (_workloadsByIp.TryGetValue(address, out var owner) && ReferenceEquals(owner, workload))
                {
                    _workloadsByIp.Remove(address);
                }
            }
        }
        else
        {
            UseNodeAddresses(workload.Addresses, -1);
        }

        UseNodeAddresses(workload.HostAddresses, -1);
        if (workload.Enrolled && workload.NodeName is { } node && _enrolledByNode.TryGetValue(node, out var local))
        {
            local = local.Remove(workload, ReferenceEqualityComparer.Instance);
            if (local.IsEmpty)
            {
                _enrolledByNode.Remove(node);
            }
            else
            {
                _enrolledByNode[node] = local;
            }
        }

        Changed();
    }

    private void UseNodeAddresses(ImmutableArray<IPAddress> addresses, int delta)
    {
        foreach (var address in addresses)
        {
            var uses = _nodeAddressUses.GetValueOrDefault(address) + delta;
            if (uses <= 0)
            {
                _nodeAddressUses.Remove(address);
                _nodeAddresses.Remove(address);
            }
            else
            {
                _nodeAddressUses[address] = uses;
                _nodeAddresses.Add(address);
            }
        }
    }

    // ---------------------------------------------------------------- services and EndpointSlices

    private ServiceEntry ParseService(V1Service service, long ordinal)
    {
        if (!InventoryBuilder.TryName(service.Metadata, "Service", out var ns, out var name, out var nameless))
        {
            return new ServiceEntry(ordinal, null, null, nameless);
        }

        var key = (_pool.String(ns), _pool.String(name));
        var what = $"Service {ns}/{name}";
        var ipTexts = service.Spec?.ClusterIPs is { Count: > 0 } clusterIps
            ? clusterIps.ToList()
            : [service.Spec?.ClusterIP];
        var addresses = ImmutableArray.CreateBuilder<IPAddress>();
        foreach (var text in ipTexts)
        {
            // Headless ("None") and ExternalName services have no VIP but still list endpoints.
            if (string.IsNullOrWhiteSpace(text) || text == "None")
            {
                continue;
            }

            if (!InventoryBuilder.TryParseAddress(text, out var address))
            {
                return new ServiceEntry(ordinal, key, null, $"{what} skipped: cluster IP '{text}' is not an IPv4 or IPv6 address");
            }

            addresses.Add(address);
        }

        var ports = ImmutableArray.CreateBuilder<ServicePort>();
        foreach (var port in service.Spec?.Ports ?? [])
        {
            if (port is null)
            {
                continue;
            }

            if (!InventoryBuilder.IsPort(port.Port))
            {
                return new ServiceEntry(ordinal, key, null, $"{what} skipped: port {port.Port} is outside 1-65535");
            }

            int? targetNumber = null;
            string? targetName = null;
            var target = port.TargetPort?.Value;
            if (string.IsNullOrEmpty(target))
            {
                targetNumber = port.Port; // Kubernetes defaults targetPort to port
            }
            else if (int.TryParse(target, NumberStyles.None, CultureInfo.InvariantCulture, out var number))
            {
                if (!InventoryBuilder.IsPort(number))
                {
                    return new ServiceEntry(ordinal, key, null, $"{what} skipped: targetPort {number} of port {port.Port} is outside 1-65535");
                }

                targetNumber = number;
            }
            else
            {
                targetName = target;
            }

            ports.Add(new ServicePort(
                string.IsNullOrEmpty(port.Name) ? null : port.Name,
                port.Port,
                targetNumber,
                targetName,
                InventoryBuilder.Protocol(port.Protocol),
                string.IsNullOrEmpty(port.AppProtocol) ? null : _pool.String(port.AppProtocol)));
        }

        return new ServiceEntry(ordinal, key, new Service
        {
            Name = key.Item2,
            Namespace = key.Item1,
            ClusterIps = addresses.ToImmutable(),
            Ports = ports.ToImmutable(),
            Endpoints = [],
        }, null);
    }

    private void AddService(string id, ServiceEntry entry)
    {
        _serviceEntries[id] = entry;
        if (entry.Key is not { } key)
        {
            SetWarnings(entry.Ordinal, [], [entry.Warning!]);
            entry.Warnings = [entry.Warning!];
            return;
        }

        _serviceClaims.Add(key, entry);
        ResolveService(key);
    }

    private void RemoveService(string id)
    {
        if (!_serviceEntries.Remove(id, out var entry))
        {
            return;
        }

        SetWarnings(entry.Ordinal, entry.Warnings, []);
        if (entry.Key is { } key)
        {
            _serviceClaims.Remove(key, entry);
            ResolveService(key);
        }
    }

    private SliceEntry ParseSlice(V1EndpointSlice slice, long ordinal)
    {
        if (!InventoryBuilder.TryName(slice.Metadata, "EndpointSlice", out var ns, out var name, out var nameless))
        {
            return new SliceEntry(ordinal, null, [], [nameless]);
        }

        var what = $"EndpointSlice {ns}/{name}";
        if (slice.Metadata.Labels?.TryGetValue(InventoryBuilder.ServiceNameLabel, out var serviceName) != true || string.IsNullOrEmpty(serviceName))
        {
            Log.Debug("inventory", $"ignoring {what}: no {InventoryBuilder.ServiceNameLabel} label, so it belongs to no service");
            return new SliceEntry(ordinal, null, [], []);
        }

        var family = slice.AddressType switch
        {
            "IPv4" => AddressFamily.InterNetwork,
            "IPv6" => AddressFamily.InterNetworkV6,
            _ => AddressFamily.Unspecified,
        };
        if (family == AddressFamily.Unspecified)
        {
            Log.Debug("inventory", $"ignoring {what}: addressType '{slice.AddressType}' carries no IP addresses");
            return new SliceEntry(ordinal, null, [], []);
        }

        var warnings = ImmutableArray.CreateBuilder<string>();
        var ports = ImmutableArray.CreateBuilder<EndpointPort>();
        foreach (var port in slice.Ports ?? [])
        {
            if (port?.Port is not { } number)
            {
                continue; // a port without a number restricts nothing we could route to
            }

            if (!InventoryBuilder.IsPort(number))
            {
                warnings.Add($"{what}: port {number} is outside 1-65535 and is ignored");
                continue;
            }

            ports.Add(new EndpointPort(string.IsNullOrEmpty(port.Name) ? null : port.Name, number, InventoryBuilder.Protocol(port.Protocol)));
        }

        var slicePorts = ports.ToImmutable();
        var sliceName = _pool.String(name);
        var endpoints = ImmutableArray.CreateBuilder<ServiceEndpoint>();
        foreach (var endpoint in slice.Endpoints ?? [])
        {
            if (endpoint is null)
            {
                continue;
            }

            // Kubernetes: an unknown (null) ready condition is to be read as ready; serving defaults to ready.
            var ready = endpoint.Conditions?.Ready ?? true;
            var serving = endpoint.Conditions?.Serving ?? ready;
            var terminating = endpoint.Conditions?.Terminating ?? false;
            var pod = endpoint.TargetRef is { Kind: "Pod", Name: { Length: > 0 } podName } targetRef
                ? new PodReference(_pool.String(string.IsNullOrEmpty(targetRef.NamespaceProperty) ? ns : targetRef.NamespaceProperty), _pool.String(podName))
                : null;
            var nodeName = string.IsNullOrEmpty(endpoint.NodeName) ? null : _pool.String(endpoint.NodeName);
            foreach (var text in endpoint.Addresses ?? [])
            {
                if (!InventoryBuilder.TryParseAddress(text, out var address) || address.AddressFamily != family)
                {
                    warnings.Add($"{what}: endpoint address '{text}' is not an {slice.AddressType} address and is ignored");
                    continue;
                }

                endpoints.Add(new ServiceEndpoint
                {
                    Address = _pool.Address(address),
                    Ready = ready,
                    Serving = serving,
                    Terminating = terminating,
                    NodeName = nodeName,
                    Pod = pod,
                    SliceName = sliceName,
                    Ports = slicePorts,
                });
            }
        }

        return new SliceEntry(ordinal, (_pool.String(ns), _pool.String(serviceName)), endpoints.ToImmutable(), warnings.ToImmutable());
    }

    private void AddSlice(string id, SliceEntry entry)
    {
        _sliceEntries[id] = entry;
        SetWarnings(entry.Ordinal, [], entry.Warnings);
        if (entry.Service is { } service)
        {
            _slicesByService.Add(service, entry);
            ResolveService(service);
        }
    }

    private void RemoveSlice(string id)
    {
        if (!_sliceEntries.Remove(id, out var entry))
        {
            return;
        }

        SetWarnings(entry.Ordinal, entry.Warnings, []);
        if (entry.Service is { } service)
        {
            _slicesByService.Remove(service, entry);
            ResolveService(service);
        }
    }

    /// <summary>The one Service of this name: the first valid claimant, with the endpoints of its slices, and its VIPs.</summary>
    private void ResolveService((string, string) key)
    {
        ServiceEntry? winner = null;
        foreach (var claimant in _serviceClaims.Entries(key))
        {
            ImmutableArray<string> warnings;
            if (winner is not null)
            {
                warnings = [$"Service {key.Item1}/{key.Item2} appears twice; the second one is ignored"];
            }
            else if (claimant.Compiled is null)
            {
                warnings = [claimant.Warning!];
            }
            else
            {
                winner = claimant;
                warnings = [];
            }

            SetWarnings(claimant.Ordinal, claimant.Warnings, warnings);
            claimant.Warnings = warnings;
        }

        Service? current = null;
        if (winner?.Compiled is { } compiled)
        {
            var slices = _slicesByService.Count(key);
            current = slices == 0 ? compiled
                : compiled with { Endpoints = slices == 1 ? _slicesByService.Entries(key).First().Endpoints : [.. _slicesByService.Entries(key).SelectMany(s => s.Endpoints)] };
        }

        var old = _services.GetValueOrDefault(key);
        if (ReferenceEquals(old, current))
        {
            return;
        }

        if (current is null)
        {
            _services.Remove(key);
        }
        else
        {
            _services[key] = current;
        }

        Changed();

        // The service's own VIP table: the first port of a number wins, TCP only (capture steers TCP connects only).
        var targets = new Dictionary<IPEndPoint, ServiceTarget>();
        foreach (var clusterIp in current?.ClusterIps ?? [])
        {
            foreach (var port in current!.Ports)
            {
                if (port.Protocol != "TCP")
                {
                    continue;
                }

                var vip = new IPEndPoint(clusterIp, port.Port);
                if (!targets.ContainsKey(vip))
                {
                    targets[vip] = new ServiceTarget(current, port, vip, ServiceResolution.ReadyEndpoints(current, port, clusterIp.AddressFamily));
                }
            }
        }

        var previous = _targetsOfService.GetValueOrDefault(key);
        if (targets.Count == 0)
        {
            _targetsOfService.Remove(key);
        }
        else
        {
            _targetsOfService[key] = [.. targets.Values];
        }

        foreach (var vip in previous?.Select(t => t.Vip) ?? [])
        {
            if (!targets.ContainsKey(vip) && _vipClaims.TryGetValue(vip, out var claims))
            {
                claims.Remove(key);
                if (claims.Count == 0)
                {
                    _vipClaims.Remove(vip);
                }

                ResolveVip(vip);
            }
        }

        foreach (var vip in targets.Keys)
        {
            if (!_vipClaims.TryGetValue(vip, out var claims))
            {
                _vipClaims[vip] = claims = [];
            }

            if (!claims.Contains(key))
            {
                claims.Add(key);
            }

            ResolveVip(vip);
        }
    }

    /// <summary>Two services on one VIP and port: the first by namespace and name answers, as a sorted build would.</summary>
    private void ResolveVip(IPEndPoint vip)
    {
        if (_vipClaims.GetValueOrDefault(vip) is not { Count: > 0 } claims)
        {
            _targets.Remove(vip);
            return;
        }

        var winner = claims.Count == 1 ? claims[0] : claims.Min(NameComparer.Instance);
        _targets[vip] = Array.Find(_targetsOfService[winner], t => t.Vip.Equals(vip))!;
    }

    // ---------------------------------------------------------------- policies

    private void UpsertPolicy<T>(Dictionary<string, (long Ordinal, T Policy, string Json)> policies, string id, T policy)
        where T : IKubernetesObject
    {
        var json = KubernetesJson.Serialize(policy);
        if (policies.TryGetValue(id, out var old))
        {
            if (old.Json == json)
            {
                return;
            }

            policies[id] = (old.Ordinal, policy, json);
        }
        else
        {
            policies[id] = (_nextOrdinal++, policy, json);
        }

        _policiesDirty = true;
    }

    // ---------------------------------------------------------------- entries

    private interface IOrdered
    {
        long Ordinal { get; }
    }

    private sealed class NamespaceEntry(long ordinal, string? name, MeshNamespace? value, string? warning) : IOrdered
    {
        public long Ordinal { get; } = ordinal;

        public string? Name { get; } = name;

        public MeshNamespace? Value { get; } = value;

        public string? Warning { get; } = warning;

        public ImmutableArray<string> Warnings { get; set; } = warning is null ? [] : [warning];

        public bool SameAs(NamespaceEntry other) =>
            Name == other.Name && Warning == other.Warning
            && (Value is null ? other.Value is null : other.Value is not null && Value.Enrolled == other.Value.Enrolled && SameLabels(Value.Labels, other.Value.Labels));
    }

    /// <summary>
    /// One pod as held. Kept small, as there is one per pod in the cluster: the name is the candidate's when there
    /// is one, and what only unusable or warned-about pods have lives in a separate object most pods never get.
    /// </summary>
    private sealed class PodEntry(long ordinal) : IOrdered
    {
        private Unusual? _unusual;

        public long Ordinal { get; } = ordinal;

        /// <summary>Namespace and name, for every named pod that has not finished: such a pod claims its name even when unusable.</summary>
        public (string, string)? Key
        {
            get => Candidate is { } candidate ? (candidate.Namespace, candidate.Name) : _unusual?.Key;
            init
            {
                if (value is not null)
                {
                    (_unusual ??= new()).Key = value;
                }
            }
        }

        /// <summary>The workload it is when accepted; null when it has no usable address.</summary>
        public Workload? Candidate { get; set; }

        /// <summary>Why it is unusable (no name, no or a bad address).</summary>
        public string? Warning
        {
            get => _unusual?.Warning;
            init
            {
                if (value is not null)
                {
                    (_unusual ??= new()).Warning = value;
                }
            }
        }

        /// <summary>Warnings an accepted pod carries (a bad fail-open annotation or mesh label).</summary>
        public ImmutableArray<string> AcceptedWarnings
        {
            get => _unusual?.AcceptedWarnings ?? [];
            init
            {
                if (!value.IsDefaultOrEmpty)
                {
                    (_unusual ??= new()).AcceptedWarnings = value;
                }
            }
        }

        /// <summary>No weft.dev/mesh label of its own: its enrollment follows its namespace's.</summary>
        public bool FollowsNamespace { get; init; }

        public bool Accepted { get; set; }

        public ImmutableArray<string> Warnings { get; set; } = [];

        public bool SameAs(PodEntry other) =>
            Key == other.Key && Warning == other.Warning && FollowsNamespace == other.FollowsNamespace
            && AcceptedWarnings.SequenceEqual(other.AcceptedWarnings)
            && (Candidate is null ? other.Candidate is null : other.Candidate is not null && SameWorkload(Candidate, other.Candidate));

        private static bool SameWorkload(Workload a, Workload b) =>
            a.Name == b.Name && a.Namespace == b.Namespace && a.ServiceAccount == b.ServiceAccount && a.NodeName == b.NodeName
            && a.Addresses.SequenceEqual(b.Addresses) && SameLabels(a.Labels, b.Labels) && a.NetnsPath == b.NetnsPath
            && a.SameUid(b) && a.QosClass == b.QosClass && a.Phase == b.Phase && a.FailOpen == b.FailOpen
            && a.Enrolled == b.Enrolled && a.HostNetwork == b.HostNetwork && a.HostAddresses.SequenceEqual(b.HostAddresses);

        private sealed class Unusual
        {
            public (string, string)? Key { get; set; }

            public string? Warning { get; set; }

            public ImmutableArray<string> AcceptedWarnings { get; set; } = [];
        }
    }

    /// <summary>
    /// The entries claiming each key (a name, an address, a Service), in ordinal order. Almost every key has one
    /// claimant, held inline (a list only for the rare conflicts): at 100,000 pods a list per key would cost more
    /// than the pods' workloads.
    /// </summary>
    private sealed class Claims<TKey, TEntry>(IEqualityComparer<TKey>? comparer = null)
        where TKey : notnull
        where TEntry : class, IOrdered
    {
        private readonly Dictionary<TKey, object> _claims = new(comparer);

        public void Add(TKey key, TEntry entry)
        {
            if (!_claims.TryGetValue(key, out var held))
            {
                _claims[key] = entry;
                return;
            }

            if (held is not List<TEntry> list)
            {
                _claims[key] = list = [(TEntry)held];
            }

            var index = list.Count;
            while (index > 0 && list[index - 1].Ordinal > entry.Ordinal)
            {
                index--;
            }

            list.Insert(index, entry);
        }

        public void Remove(TKey key, TEntry entry)
        {
            if (!_claims.TryGetValue(key, out var held))
            {
                return;
            }

            if (held is List<TEntry> list)
            {
                list.Remove(entry);
                if (list.Count == 1)
                {
                    _claims[key] = list[0];
                }
            }
            else if (ReferenceEquals(held, entry))
            {
                _claims.Remove(key);
            }
        }

        public int Count(TKey key) => !_claims.TryGetValue(key, out var held) ? 0 : held is List<TEntry> list ? list.Count : 1;

        public IEnumerable<TEntry> Entries(TKey key) =>
            !_claims.TryGetValue(key, out var held) ? [] : held is List<TEntry> list ? list : [(TEntry)held];

        public void CopyTo(TKey key, List<TEntry> target)
        {
            if (_claims.TryGetValue(key, out var held))
            {
                if (held is List<TEntry> list)
                {
                    target.AddRange(list);
                }
                else
                {
                    target.Add((TEntry)held);
                }
            }
        }
    }

    private sealed class ServiceEntry(long ordinal, (string, string)? key, Service? compiled, string? warning) : IOrdered
    {
        public long Ordinal { get; } = ordinal;

        public (string, string)? Key { get; } = key;

        /// <summary>The valid service, without endpoints; null when invalid.</summary>
        public Service? Compiled { get; } = compiled;

        public string? Warning { get; } = warning;

        public ImmutableArray<string> Warnings { get; set; } = [];

        public bool SameAs(ServiceEntry other) =>
            Key == other.Key && Warning == other.Warning
            && (Compiled is null ? other.Compiled is null : other.Compiled is not null
                && Compiled.ClusterIps.SequenceEqual(other.Compiled.ClusterIps) && Compiled.Ports.SequenceEqual(other.Compiled.Ports));
    }

    private sealed class SliceEntry(long ordinal, (string, string)? service, ImmutableArray<ServiceEndpoint> endpoints, ImmutableArray<string> warnings) : IOrdered
    {
        public long Ordinal { get; } = ordinal;

        /// <summary>Namespace and name of the Service it lists endpoints for; null when it belongs to none.</summary>
        public (string, string)? Service { get; } = service;

        public ImmutableArray<ServiceEndpoint> Endpoints { get; } = endpoints;

        public ImmutableArray<string> Warnings { get; } = warnings;

        public bool SameAs(SliceEntry other) =>
            Service == other.Service && Warnings.SequenceEqual(other.Warnings)
            && Endpoints.SequenceEqual(other.Endpoints, EndpointComparer.Instance);
    }

    private sealed class EndpointComparer : IEqualityComparer<ServiceEndpoint>
    {
        public static readonly EndpointComparer Instance = new();

        public bool Equals(ServiceEndpoint? a, ServiceEndpoint? b) =>
            a is not null && b is not null && a.Address.Equals(b.Address) && a.Ready == b.Ready && a.Serving == b.Serving
            && a.Terminating == b.Terminating && a.NodeName == b.NodeName && a.Pod == b.Pod && a.SliceName == b.SliceName
            && a.Ports.SequenceEqual(b.Ports);

        public int GetHashCode(ServiceEndpoint endpoint) => endpoint.Address.GetHashCode();
    }

    private static bool SameLabels(IReadOnlyDictionary<string, string> a, IReadOnlyDictionary<string, string> b)
    {
        if (ReferenceEquals(a, b))
        {
            return true;
        }

        if (a.Count != b.Count)
        {
            return false;
        }

        foreach (var (key, value) in a)
        {
            if (!b.TryGetValue(key, out var other) || other != value)
            {
                return false;
            }
        }

        return true;
    }
}

/// <summary>Orders (namespace, name) pairs ordinally, namespace first: the order snapshots list workloads and services in.</summary>
internal sealed class NameComparer : IComparer<(string, string)>
{
    public static readonly NameComparer Instance = new();

    public int Compare((string, string) x, (string, string) y)
    {
        var byNamespace = string.CompareOrdinal(x.Item1, y.Item1);
        return byNamespace != 0 ? byNamespace : string.CompareOrdinal(x.Item2, y.Item2);
    }
}
