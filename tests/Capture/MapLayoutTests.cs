using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Weft.Capture;

namespace Weft.Tests.Capture;

/// <summary>
/// The C# mirrors in agent/Capture/MapLayout.cs must match bpf/weft.h byte for byte: layouts are
/// read from the BTF of the very objects embedded in the agent (bpftool), constants from the header
/// compiled with the host C compiler. No numbers are written down twice.
/// </summary>
public sealed class MapLayoutTests
{
    public static TheoryData<Type> Mirrors => [typeof(WeftAddr), typeof(WeftPod), typeof(WeftOrigDst), typeof(WeftConnKey), typeof(WeftConfig), typeof(WeftDeliveryKey)];

    [Theory]
    [MemberData(nameof(Mirrors))]
    public void MapLayout_CSharpMirror_MatchesBtfOfEveryBuiltObject(Type mirror)
    {
        var cName = SnakeCase(mirror.Name);
        var csharpFields = mirror.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)
            .Select(f => (Name: SnakeCase(f.Name), Offset: (int)Marshal.OffsetOf(mirror, f.Name), Size: Marshal.SizeOf(f.FieldType)))
            .OrderBy(f => f.Offset)
            .ToList();

        foreach (var resource in new[] { "bpf/capture.bpf.o", "bpf/inbound.bpf.o" })
        {
            var btf = BtfStruct(resource, cName);
            Assert.Equal(btf.Size, Marshal.SizeOf(mirror));
            Assert.Equal(btf.Members, csharpFields);
        }
    }

    [Fact]
    public void MapLayout_Constants_MatchHeader()
    {
        var header = Constants(
            "WEFT_LAYOUT_VERSION", "WEFT_MAX_EXCLUDED_PORTS", "WEFT_POD_FAIL_OPEN", "WEFT_POD_HAS_IPV4", "WEFT_POD_HAS_IPV6",
            "WEFT_ADMIN_PORT", "WEFT_OUTBOUND_PORT", "WEFT_INBOUND_PORT", "WEFT_HBONE_PORT",
            "WEFT_METRICS_PORT", "WEFT_READY_PORT");
        var defaults = new CaptureOptions("/unused", "/unused");

        Assert.Equal((ulong)MapLayout.LayoutVersion, header["WEFT_LAYOUT_VERSION"]);
        Assert.Equal((ulong)MapLayout.MaxExcludedPorts, header["WEFT_MAX_EXCLUDED_PORTS"]);
        Assert.Equal((ulong)MapLayout.PodFailOpen, header["WEFT_POD_FAIL_OPEN"]);
        Assert.Equal((ulong)MapLayout.PodHasIpv4, header["WEFT_POD_HAS_IPV4"]);
        Assert.Equal((ulong)MapLayout.PodHasIpv6, header["WEFT_POD_HAS_IPV6"]);
        Assert.Equal((ulong)defaults.OutboundPort, header["WEFT_OUTBOUND_PORT"]);
        Assert.Equal((ulong)defaults.InboundPort, header["WEFT_INBOUND_PORT"]);
        Assert.Equal((ulong)MapLayout.AdminPort, header["WEFT_ADMIN_PORT"]);
        Assert.Equal((ulong)MapLayout.HbonePort, header["WEFT_HBONE_PORT"]);
        Assert.Equal((ulong)defaults.TunnelPort, header["WEFT_HBONE_PORT"]);
        Assert.Equal((ulong)MapLayout.MetricsPort, header["WEFT_METRICS_PORT"]);
        Assert.Equal((ulong)MapLayout.ReadyPort, header["WEFT_READY_PORT"]);
    }

    private static (int Size, List<(string Name, int Offset, int Size)> Members) BtfStruct(string resource, string name)
    {
        var file = Path.Combine(Path.GetTempPath(), $"weft-layout-{Guid.NewGuid():N}.o");
        try
        {
            using (var stream = typeof(BpfCapture).Assembly.GetManifestResourceStream(resource)
                ?? throw new InvalidOperationException($"{resource} is not embedded in the agent"))
            using (var output = File.Create(file))
            {
                stream.CopyTo(output);
            }
            using var doc = JsonDocument.Parse(Run("bpftool", "-j", "btf", "dump", "file", file));
            var types = doc.RootElement.GetProperty("types").EnumerateArray().ToDictionary(t => t.GetProperty("id").GetInt32(), t => t.Clone());
            var s = types.Values.Single(t => t.GetProperty("kind").GetString() == "STRUCT" && t.GetProperty("name").GetString() == name);
            var members = s.GetProperty("members").EnumerateArray()
                .Select(m => (m.GetProperty("name").GetString()!, m.GetProperty("bits_offset").GetInt32() / 8, SizeOf(types, m.GetProperty("type_id").GetInt32())))
                .ToList();
            return (s.GetProperty("size").GetInt32(), members);
        }
        finally
        {
            File.Delete(file);
        }
    }

    private static int SizeOf(Dictionary<int, JsonElement> types, int id)
    {
        var t = types[id];
        return t.GetProperty("kind").GetString() switch
        {
            "TYPEDEF" or "CONST" or "VOLATILE" => SizeOf(types, t.GetProperty("type_id").GetInt32()),
            "ARRAY" => t.GetProperty("nr_elems").GetInt32() * SizeOf(types, t.GetProperty("type_id").GetInt32()),
            _ => t.GetProperty("size").GetInt32(),
        };
    }

    private static Dictionary<string, ulong> Constants(params string[] names)
    {
        var dir = Directory.CreateTempSubdirectory("weft-layout-");
        try
        {
            var source = new StringBuilder("#include <stdio.h>\n#include \"weft.h\"\nint main(void)\n{\n");
            foreach (var n in names)
            {
                source.Append($"\tprintf(\"{n} %llu\\n\", (unsigned long long)({n}));\n");
            }
            source.Append("\treturn 0;\n}\n");
            var c = Path.Combine(dir.FullName, "constants.c");
            var exe = Path.Combine(dir.FullName, "constants");
            File.WriteAllText(c, source.ToString());
            Run("cc", "-Wall", "-Werror", "-I", Path.Combine(RepositoryRoot(), "bpf"), c, "-o", exe);
            return Run(exe).Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .Select(l => l.Split(' '))
                .ToDictionary(p => p[0], p => ulong.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static string RepositoryRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "bpf", "weft.h")))
            {
                return d.FullName;
            }
        }
        throw new InvalidOperationException("bpf/weft.h not found above " + AppContext.BaseDirectory);
    }

    private static string SnakeCase(string pascal)
    {
        var sb = new StringBuilder();
        for (var i = 0; i < pascal.Length; i++)
        {
            if (char.IsUpper(pascal[i]) && i > 0)
            {
                sb.Append('_');
            }
            sb.Append(char.ToLowerInvariant(pascal[i]));
        }
        return sb.ToString();
    }

    private static string Run(string file, params string[] arguments)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in arguments)
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEndAsync();
        var error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return p.ExitCode == 0 ? output.Result : throw new InvalidOperationException($"{file} {string.Join(' ', arguments)}: {error}");
    }
}
