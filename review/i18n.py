"""The web pages' message catalogue: every UI string in English and Vietnamese.

Templates and scripts never hold UI text of their own: they ask for a key (``t("key")`` in Jinja,
``T.key`` in the viewer's script, which gets the ``js.*`` keys as JSON). A test checks that both
languages have every key and that the templates hold no untranslated text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LANGUAGES = {"en": "English", "vi": "Tiếng Việt"}

MESSAGES: dict[str, dict[str, str]] = {
    # --- frame -------------------------------------------------------------------------------------
    "app.tagline": {"en": "Lung nodule screening", "vi": "Tầm soát nốt phổi"},
    "nav.worklist": {"en": "Worklist", "vi": "Danh sách ca"},
    "nav.monitoring": {"en": "Model monitoring", "vi": "Theo dõi mô hình"},
    "nav.audit": {"en": "Audit trail", "vi": "Nhật ký truy cập"},
    "nav.logout": {"en": "Log out", "vi": "Đăng xuất"},
    "nav.language": {"en": "Language", "vi": "Ngôn ngữ"},
    "nav.signed_in_as": {"en": "Signed in as {name} ({role})", "vi": "Đăng nhập: {name} ({role})"},
    "role.radiologist": {"en": "radiologist", "vi": "bác sĩ CĐHA"},
    "role.admin": {"en": "administrator", "vi": "quản trị viên"},
    "role.researcher": {"en": "researcher", "vi": "nghiên cứu viên"},
    "footer.notice": {"en": "AI findings are suggestions: every finding is decided by a radiologist.",
                      "vi": "Kết quả AI chỉ là gợi ý: mọi tổn thương đều do bác sĩ quyết định."},
    # --- login -------------------------------------------------------------------------------------
    "login.title": {"en": "Sign in", "vi": "Đăng nhập"},
    "login.user": {"en": "User name", "vi": "Tên đăng nhập"},
    "login.password": {"en": "Password", "vi": "Mật khẩu"},
    "login.submit": {"en": "Sign in", "vi": "Đăng nhập"},
    "login.failed": {"en": "Wrong user name or password.", "vi": "Sai tên đăng nhập hoặc mật khẩu."},
    "login.throttled": {"en": "Too many failed attempts. Try again in 15 minutes.",
                        "vi": "Đăng nhập sai quá nhiều lần. Vui lòng thử lại sau 15 phút."},
    "login.expired": {"en": "The form expired. Please try again.", "vi": "Biểu mẫu đã hết hạn. Vui lòng thử lại."},
    # --- worklist ----------------------------------------------------------------------------------
    "wl.title": {"en": "Worklist", "vi": "Danh sách ca chờ đọc"},
    "wl.subtitle": {"en": "Ordered by AI suspicion: suggested Lung-RADS category, largest nodule, confidence.",
                    "vi": "Sắp xếp theo mức nghi ngờ của AI: phân loại Lung-RADS gợi ý, nốt lớn nhất, độ tin cậy."},
    "wl.filter.state": {"en": "State", "vi": "Trạng thái"},
    "wl.filter.todo": {"en": "To review (new + in review)", "vi": "Cần đọc (mới + đang đọc)"},
    "wl.filter.all": {"en": "All", "vi": "Tất cả"},
    "wl.filter.from": {"en": "Study date from", "vi": "Ngày chụp từ"},
    "wl.filter.to": {"en": "to", "vi": "đến"},
    "wl.filter.model": {"en": "Model", "vi": "Mô hình"},
    "wl.filter.modality": {"en": "Modality", "vi": "Kỹ thuật"},
    "wl.filter.any": {"en": "Any", "vi": "Bất kỳ"},
    "wl.filter.apply": {"en": "Filter", "vi": "Lọc"},
    "wl.filter.reset": {"en": "Reset", "vi": "Đặt lại"},
    "wl.col.priority": {"en": "Lung-RADS", "vi": "Lung-RADS"},
    "wl.col.patient": {"en": "Patient", "vi": "Bệnh nhân"},
    "wl.col.study": {"en": "Study", "vi": "Ca chụp"},
    "wl.col.findings": {"en": "AI findings", "vi": "Tổn thương AI"},
    "wl.col.largest": {"en": "Largest", "vi": "Lớn nhất"},
    "wl.col.confidence": {"en": "Max. confidence", "vi": "Độ tin cậy cao nhất"},
    "wl.col.model": {"en": "Model", "vi": "Mô hình"},
    "wl.col.state": {"en": "State", "vi": "Trạng thái"},
    "wl.col.claim": {"en": "Reader", "vi": "Người đọc"},
    "wl.col.received": {"en": "Received", "vi": "Nhận lúc"},
    "wl.empty": {"en": "No study matches these filters.", "vi": "Không có ca nào phù hợp bộ lọc."},
    "wl.count": {"en": "{n} studies", "vi": "{n} ca"},
    "wl.open": {"en": "Open", "vi": "Mở"},
    "wl.claimed_by": {"en": "{name} since {time}", "vi": "{name} từ {time}"},
    "wl.suggested": {"en": "suggested", "vi": "gợi ý"},
    "state.new": {"en": "New", "vi": "Mới"},
    "state.in_review": {"en": "In review", "vi": "Đang đọc"},
    "state.signed": {"en": "Signed", "vi": "Đã ký"},
    "state.no_findings": {"en": "No findings", "vi": "Không có tổn thương"},
    "state.rejected": {"en": "Rejected", "vi": "Đã từ chối"},
    "state.receiving": {"en": "Receiving", "vi": "Đang nhận"},
    "state.queued": {"en": "Queued", "vi": "Chờ phân tích"},
    "state.analyzing": {"en": "Analysing", "vi": "Đang phân tích"},
    "state.failed": {"en": "Failed", "vi": "Lỗi"},
    "state.skipped": {"en": "Not analysed", "vi": "Không phân tích"},
    # --- viewer ------------------------------------------------------------------------------------
    "v.back": {"en": "Worklist", "vi": "Danh sách"},
    "v.patient": {"en": "Patient", "vi": "Bệnh nhân"},
    "v.accession": {"en": "Accession", "vi": "Số phiếu"},
    "v.study_date": {"en": "Study date", "vi": "Ngày chụp"},
    "v.model": {"en": "Model", "vi": "Mô hình"},
    "v.findings": {"en": "Findings", "vi": "Tổn thương"},
    "v.readonly_claimed": {"en": "Read only: {name} is reviewing this study.",
                           "vi": "Chỉ xem: {name} đang đọc ca này."},
    "v.readonly_role": {"en": "Read only: your role cannot take decisions.",
                        "vi": "Chỉ xem: vai trò của bạn không được ra quyết định."},
    "v.readonly_state": {"en": "Read only: this study is {state}.", "vi": "Chỉ xem: ca này {state}."},
    "v.claimed_by_you": {"en": "You are reviewing this study.", "vi": "Bạn đang đọc ca này."},
    "v.release": {"en": "Release", "vi": "Trả ca"},
    "v.break_claim": {"en": "Break claim", "vi": "Gỡ người đọc"},
    "v.preset.lung": {"en": "Lung", "vi": "Phổi"},
    "v.preset.mediastinum": {"en": "Mediastinum", "vi": "Trung thất"},
    "v.zoom_reset": {"en": "Fit", "vi": "Vừa khung"},
    "v.add_mode": {"en": "Add nodule", "vi": "Thêm nốt"},
    "v.study_level": {"en": "Study", "vi": "Kết luận ca"},
    "v.lungrads": {"en": "Lung-RADS category", "vi": "Phân loại Lung-RADS"},
    "v.lungrads_suggested": {"en": "suggested: {cat}", "vi": "gợi ý: {cat}"},
    "v.sign": {"en": "Sign and send", "vi": "Ký và gửi"},
    "v.reject_study": {"en": "Reject study", "vi": "Từ chối ca"},
    "v.signed_by": {"en": "Signed by {name} at {time}", "vi": "Ký bởi {name} lúc {time}"},
    "v.rejected_by": {"en": "Rejected by {name} at {time}: {reason}", "vi": "Từ chối bởi {name} lúc {time}: {reason}"},
    "v.shortcuts": {"en": "Keys", "vi": "Phím tắt"},
    "v.shortcut_list": {
        "en": "↑/↓ wheel: slice · j/k: next/previous finding · a: accept · r: reject · e: edit · n: add · "
              "s: sign · 1/2: lung/mediastinum · +/−/0: zoom · drag: window · shift+drag: pan",
        "vi": "↑/↓ con lăn: lát cắt · j/k: tổn thương sau/trước · a: chấp nhận · r: loại bỏ · e: sửa · "
              "n: thêm · s: ký · 1/2: phổi/trung thất · +/−/0: phóng to · kéo: cửa sổ · shift+kéo: di chuyển",
    },
    "v.nojs": {"en": "The viewer needs JavaScript.", "vi": "Trình xem ảnh cần JavaScript."},
    # --- viewer script strings (sent to the browser as JSON) -----------------------------------------
    "js.slice": {"en": "Slice", "vi": "Lát"},
    "js.window": {"en": "W/L", "vi": "W/L"},
    "js.zoom": {"en": "Zoom", "vi": "Thu phóng"},
    "js.accept": {"en": "Accept", "vi": "Chấp nhận"},
    "js.reject": {"en": "Reject", "vi": "Loại bỏ"},
    "js.edit": {"en": "Edit", "vi": "Sửa"},
    "js.remove": {"en": "Remove", "vi": "Xoá"},
    "js.save": {"en": "Save", "vi": "Lưu"},
    "js.cancel": {"en": "Cancel", "vi": "Huỷ"},
    "js.move_center": {"en": "Set centre: click the image", "vi": "Đặt tâm: bấm vào ảnh"},
    "js.diameter": {"en": "Diameter (mm)", "vi": "Đường kính (mm)"},
    "js.type": {"en": "Type", "vi": "Loại"},
    "js.type_": {"en": "not stated", "vi": "chưa xác định"},
    "js.type_solid": {"en": "solid", "vi": "đặc"},
    "js.type_part_solid": {"en": "part-solid", "vi": "bán đặc"},
    "js.type_ground_glass": {"en": "ground-glass", "vi": "kính mờ"},
    "js.reason": {"en": "Reason", "vi": "Lý do"},
    "js.reason_vessel": {"en": "Vessel", "vi": "Mạch máu"},
    "js.reason_scar": {"en": "Scar / atelectasis", "vi": "Sẹo / xẹp phổi"},
    "js.reason_artefact": {"en": "Artefact", "vi": "Nhiễu ảnh"},
    "js.reason_duplicate": {"en": "Duplicate", "vi": "Trùng lặp"},
    "js.reason_outside_lung": {"en": "Outside the lung", "vi": "Ngoài phổi"},
    "js.reason_other": {"en": "Other", "vi": "Khác"},
    "js.reason_text": {"en": "Details (optional)", "vi": "Chi tiết (không bắt buộc)"},
    "js.study_reason": {"en": "Why is the study rejected?", "vi": "Lý do từ chối ca?"},
    "js.decision_accept": {"en": "accepted", "vi": "đã chấp nhận"},
    "js.decision_reject": {"en": "rejected", "vi": "đã loại bỏ"},
    "js.decision_none": {"en": "to decide", "vi": "chưa quyết định"},
    "js.edited": {"en": "edited", "vi": "đã sửa"},
    "js.added": {"en": "added by radiologist", "vi": "bác sĩ thêm"},
    "js.ai": {"en": "AI", "vi": "AI"},
    "js.confidence": {"en": "confidence", "vi": "độ tin cậy"},
    "js.slices_range": {"en": "slices {a}–{b}", "vi": "lát {a}–{b}"},
    "js.add_hint": {"en": "Click the centre of the missed nodule.", "vi": "Bấm vào tâm nốt bị bỏ sót."},
    "js.add_title": {"en": "New nodule", "vi": "Nốt mới"},
    "js.undecided_left": {"en": "{n} finding(s) still to decide.", "vi": "Còn {n} tổn thương chưa quyết định."},
    "js.ready_to_sign": {"en": "All findings decided: ready to sign.", "vi": "Đã quyết định hết: có thể ký."},
    "js.confirm_sign": {"en": "Sign this study with Lung-RADS {cat} and send the report?",
                        "vi": "Ký ca này với Lung-RADS {cat} và gửi kết quả?"},
    "js.sign_now": {"en": "Sign", "vi": "Ký"},
    "js.signed": {"en": "Signed. The report is being sent.", "vi": "Đã ký. Kết quả đang được gửi."},
    "js.error": {"en": "Could not save: {message}", "vi": "Không lưu được: {message}"},
    "js.loading": {"en": "Loading…", "vi": "Đang tải…"},
    "js.none": {"en": "No finding. Add one with n if the AI missed a nodule.",
                "vi": "Không có tổn thương. Nhấn n để thêm nốt AI bỏ sót."},
    # --- monitoring --------------------------------------------------------------------------------
    "mon.title": {"en": "Model monitoring", "vi": "Theo dõi mô hình"},
    "mon.subtitle": {"en": "What radiologists did with each model version's findings.",
                     "vi": "Bác sĩ đã xử lý kết quả của từng phiên bản mô hình thế nào."},
    "mon.model": {"en": "Model", "vi": "Mô hình"},
    "mon.version": {"en": "Version", "vi": "Phiên bản"},
    "mon.studies": {"en": "Studies", "vi": "Số ca"},
    "mon.ai_findings": {"en": "AI findings", "vi": "Tổn thương AI"},
    "mon.accepted": {"en": "Accepted", "vi": "Chấp nhận"},
    "mon.edited": {"en": "Edited", "vi": "Đã sửa"},
    "mon.rejected": {"en": "Rejected", "vi": "Loại bỏ"},
    "mon.undecided": {"en": "Undecided", "vi": "Chưa quyết định"},
    "mon.added": {"en": "Added (missed by AI)", "vi": "Bác sĩ thêm (AI bỏ sót)"},
    "mon.precision": {"en": "Kept", "vi": "Tỉ lệ giữ"},
    "mon.reasons": {"en": "Rejection reasons", "vi": "Lý do loại bỏ"},
    "mon.empty": {"en": "No analysis yet.", "vi": "Chưa có phân tích nào."},
    # --- audit -------------------------------------------------------------------------------------
    "audit.title": {"en": "Audit trail", "vi": "Nhật ký truy cập"},
    "audit.subtitle": {"en": "Append-only: who opened, decided and signed what, when and from where.",
                       "vi": "Chỉ ghi thêm: ai đã mở, quyết định và ký gì, khi nào, từ đâu."},
    "audit.at": {"en": "Time (UTC)", "vi": "Thời gian (UTC)"},
    "audit.actor": {"en": "Who", "vi": "Người"},
    "audit.action": {"en": "Action", "vi": "Hành động"},
    "audit.target": {"en": "Object", "vi": "Đối tượng"},
    "audit.remote": {"en": "From", "vi": "Từ"},
    "audit.detail": {"en": "Detail", "vi": "Chi tiết"},
    "audit.since": {"en": "Since", "vi": "Từ ngày"},
    "audit.until": {"en": "Until", "vi": "Đến ngày"},
    "audit.export_csv": {"en": "Export CSV", "vi": "Xuất CSV"},
    "audit.export_json": {"en": "Export JSON", "vi": "Xuất JSON"},
    "audit.older": {"en": "Older", "vi": "Cũ hơn"},
    "audit.empty": {"en": "No event matches.", "vi": "Không có sự kiện phù hợp."},
    # --- errors ------------------------------------------------------------------------------------
    "err.forbidden.title": {"en": "Not allowed", "vi": "Không được phép"},
    "err.forbidden": {"en": "Your role ({role}) may not open this page.",
                      "vi": "Vai trò của bạn ({role}) không được mở trang này."},
    "err.notfound.title": {"en": "Not found", "vi": "Không tìm thấy"},
    "err.notfound": {"en": "There is no such study.", "vi": "Không có ca này."},
    "err.home": {"en": "Go to the start page", "vi": "Về trang đầu"},
}


def translate(lang: str, key: str, **values: Any) -> str:
    """The message ``key`` in ``lang`` (English if missing there), with ``{name}`` fields filled in.

    An unknown key comes back as itself, so a missing translation shows up instead of breaking a page.
    """
    entry = MESSAGES.get(key)
    if entry is None:
        return key
    text = entry.get(lang) or entry["en"]
    return text.format(**values) if values else text


def translator(lang: str) -> Callable[..., str]:
    def t(key: str, **values: Any) -> str:
        return translate(lang, key, **values)

    return t


def script_messages(lang: str) -> dict[str, str]:
    """The viewer script's strings (keys ``js.*``, without the prefix)."""
    return {k[3:]: translate(lang, k) for k in MESSAGES if k.startswith("js.")}
